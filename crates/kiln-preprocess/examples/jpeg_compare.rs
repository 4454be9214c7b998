//! Development aid: decodes JPEG files with kiln's decoder and compares them with raw RGB dumps
//! of PIL's pixels (`FILE.rgb` in a second directory), printing the files that differ.
//!
//! `cargo run --release -p kiln-preprocess --example jpeg_compare -- JPEG_DIR RGB_DIR`

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (src, dumps) = (&args[1], &args[2]);
    let mut files: Vec<_> = std::fs::read_dir(src)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e != "csv"))
        .collect();
    files.sort();
    let (mut same, mut total) = (0, 0);
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().to_string();
        let Ok(want) = std::fs::read(format!("{dumps}/{name}.rgb")) else {
            continue;
        };
        total += 1;
        let bytes = std::fs::read(&f).unwrap();
        match kiln_preprocess::jpeg::decode(&bytes) {
            Ok(img) => {
                let got = img.to_rgb();
                if got.len() != want.len() {
                    println!("{name}: size {} vs {}", got.len(), want.len());
                    continue;
                }
                let w = img.info.width as usize;
                let mut max = 0;
                let mut first = None;
                let mut count = 0;
                for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                    let d = (*a as i32 - *b as i32).abs();
                    if d > 0 {
                        count += 1;
                        first.get_or_insert(i);
                    }
                    max = max.max(d);
                }
                if max == 0 {
                    same += 1;
                } else {
                    let i = first.unwrap() / 3;
                    println!(
                        "{name}: max diff {max}, {count} samples differ, first at x={} y={} ({:?})",
                        i % w,
                        i / w,
                        img.info.mode
                    );
                }
            }
            Err(e) => println!("{name}: error {e}"),
        }
    }
    println!("{same}/{total} identical");
}
