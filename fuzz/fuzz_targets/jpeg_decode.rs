//! Any bytes through kiln's JPEG decoder and the public decode path: an image or an error,
//! never a panic, and a decoded image has the size its header claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = kiln_preprocess::DecodeOptions {
        max_pixels: 1 << 22,
        ..Default::default()
    };
    if let Ok(info) = kiln_preprocess::jpeg::probe(data) {
        if info.width as u64 * info.height as u64 > 1 << 22 {
            return;
        }
        if let Ok(img) = kiln_preprocess::jpeg::decode(data) {
            let per = match img.info.mode {
                kiln_preprocess::jpeg::JpegMode::L => 1,
                kiln_preprocess::jpeg::JpegMode::Rgb => 3,
                kiln_preprocess::jpeg::JpegMode::Cmyk => 4,
            };
            assert_eq!(img.data.len(), (info.width * info.height) as usize * per);
        }
    }
    let _ = kiln_preprocess::decode_bytes(data, "fuzz.jpg", &opts);
});
