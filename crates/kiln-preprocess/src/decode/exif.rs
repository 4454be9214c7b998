//! EXIF orientation, read from wherever PIL's `Image.getexif()` finds it.
//!
//! PIL's `ImageOps.exif_transpose` applies tag 0x0112 of the image's EXIF block; the block may
//! carry the `Exif\0\0` APP1 prefix (WebP writers keep it, and PIL strips it), and when it has
//! no orientation tag PIL falls back to `tiff:Orientation` in the XMP packet.

use image::metadata::Orientation;

/// The orientation tag (0x0112) of an EXIF block, a TIFF structure optionally preceded by
/// `Exif\0\0`. `None` when the block is malformed or has no such tag.
pub(crate) fn orientation_from_exif(block: &[u8]) -> Option<u16> {
    let t = block.strip_prefix(b"Exif\0\0").unwrap_or(block);
    let le = match t.get(..4)? {
        [b'I', b'I', 42, 0] => true,
        [b'M', b'M', 0, 42] => false,
        _ => return None,
    };
    let u16_at = |o: usize| -> Option<u16> {
        let b = t.get(o..o + 2)?;
        Some(if le {
            u16::from_le_bytes([b[0], b[1]])
        } else {
            u16::from_be_bytes([b[0], b[1]])
        })
    };
    let u32_at = |o: usize| -> Option<u32> {
        let b = t.get(o..o + 4)?;
        let a = [b[0], b[1], b[2], b[3]];
        Some(if le {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        })
    };
    let ifd = u32_at(4)? as usize;
    let n = u16_at(ifd)? as usize;
    (0..n).find_map(|i| {
        let e = ifd + 2 + 12 * i;
        if u16_at(e)? != 0x0112 {
            return None;
        }
        // SHORT (3) is the type the standard gives; a LONG is read too, as PIL does.
        match u16_at(e + 2)? {
            3 => u16_at(e + 8),
            4 => u32_at(e + 8).and_then(|v| u16::try_from(v).ok()),
            _ => None,
        }
    })
}

/// `tiff:Orientation="N"` or `<tiff:Orientation>N` in an XMP packet, PIL's fallback: the first
/// match of `tiff:Orientation(="|>)([0-9])`.
pub(crate) fn orientation_from_xmp(xmp: &[u8]) -> Option<u16> {
    let key = b"tiff:Orientation";
    let mut from = 0;
    while let Some(i) = find(&xmp[from..], key) {
        let rest = &xmp[from + i + key.len()..];
        let digit = match rest {
            [b'=', b'"', d, ..] | [b'>', d, ..] if d.is_ascii_digit() => Some(*d),
            _ => None,
        };
        if let Some(d) = digit {
            return Some((d - b'0') as u16);
        }
        from += i + key.len();
    }
    None
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// PIL's transposition for an orientation value; anything but 2–8 leaves the image as is.
pub(crate) fn to_orientation(v: Option<u16>) -> Orientation {
    v.and_then(|v| u8::try_from(v).ok())
        .and_then(Orientation::from_exif)
        .unwrap_or(Orientation::NoTransforms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_both_byte_orders_prefix_and_xmp() {
        // One IFD entry: tag 0x0112, SHORT, count 1, value 6.
        let le = [
            b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0,
        ];
        assert_eq!(orientation_from_exif(&le), Some(6));
        let mut pre = b"Exif\0\0".to_vec();
        pre.extend_from_slice(&le);
        assert_eq!(orientation_from_exif(&pre), Some(6));
        let be = [
            b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 8, 0, 0,
        ];
        assert_eq!(orientation_from_exif(&be), Some(8));
        assert_eq!(orientation_from_exif(&le[..12]), None);
        assert_eq!(
            orientation_from_xmp(br#"<x tiff:Orientation="3"/>"#),
            Some(3)
        );
        assert_eq!(
            orientation_from_xmp(b"<tiff:Orientation>5</tiff:Orientation>"),
            Some(5)
        );
        assert_eq!(orientation_from_xmp(b"tiff:Orientation=\"x\""), None);
    }
}
