//! Entropy decoding of scans into the coefficient buffers: baseline/extended sequential scans and
//! the four kinds of progressive scan (DC first/refine, AC first/refine), with restart intervals.

use super::huffman::{BitReader, HuffTable};
use super::markers::{Frame, ZIGZAG};
use super::{next_marker, JpegError};

/// One scan's header.
pub struct ScanHeader {
    /// Indices into the frame's components, in scan order.
    pub comps: Vec<usize>,
    /// DC and AC table selectors per scan component.
    pub tables: Vec<(usize, usize)>,
    /// Spectral selection start.
    pub ss: usize,
    /// Spectral selection end.
    pub se: usize,
    /// Successive approximation high bit.
    pub ah: u32,
    /// Successive approximation low bit.
    pub al: u32,
}

/// Decoder state that lives across scans.
pub struct Coefs {
    /// Per component, `bstride × brows` blocks of 64 coefficients in natural order.
    pub blocks: Vec<Vec<i16>>,
    /// libjpeg's `coef_bits`: per component and coefficient, the Al of the last scan that
    /// coded it, or -1 if none has. Block smoothing depends on it.
    pub coef_bits: Vec<[i32; 64]>,
}

/// Decodes one scan whose entropy data starts at `pos`; returns the position just past it
/// (the 0xFF of the next marker).
#[allow(clippy::too_many_arguments)]
pub fn decode_scan(
    data: &[u8],
    pos: usize,
    frame: &Frame,
    sh: &ScanHeader,
    dc_tables: &[Option<HuffTable>; 4],
    ac_tables: &[Option<HuffTable>; 4],
    restart_interval: usize,
    coefs: &mut Coefs,
) -> Result<usize, JpegError> {
    let progressive = frame.progressive;
    let (ss, se, ah, al) = if progressive {
        (sh.ss, sh.se, sh.ah, sh.al)
    } else {
        (0, 63, 0, 0)
    };
    if progressive {
        let bad = se > 63
            || ss > se
            || ah > 13
            || al > 13
            || (ss == 0 && se != 0)
            || (ss > 0 && sh.comps.len() != 1);
        if bad {
            return Err(JpegError::Corrupt(
                "invalid progressive scan parameters".into(),
            ));
        }
    }
    let needs_dc = ss == 0 && ah == 0;
    let needs_ac = se > 0;
    let mut dcs = Vec::new();
    let mut acs = Vec::new();
    for &(td, ta) in &sh.tables {
        let dc =
            if needs_dc {
                Some(dc_tables[td].as_ref().ok_or_else(|| {
                    JpegError::Corrupt("scan uses an undefined Huffman table".into())
                })?)
            } else {
                None
            };
        let ac =
            if needs_ac {
                Some(ac_tables[ta].as_ref().ok_or_else(|| {
                    JpegError::Corrupt("scan uses an undefined Huffman table".into())
                })?)
            } else {
                None
            };
        dcs.push(dc);
        acs.push(ac);
    }
    for &ci in &sh.comps {
        let bits = &mut coefs.coef_bits[ci];
        for b in bits.iter_mut().take(se + 1).skip(ss) {
            *b = al as i32;
        }
    }

    let interleaved = sh.comps.len() > 1;
    let (mcus_x, mcus_y) = if interleaved {
        (frame.mcux, frame.mcuy)
    } else {
        let c = &frame.comps[sh.comps[0]];
        (c.bw, c.bh)
    };
    if interleaved {
        let blocks: usize = sh
            .comps
            .iter()
            .map(|&ci| frame.comps[ci].h * frame.comps[ci].v)
            .sum();
        if blocks > 10 {
            return Err(JpegError::Corrupt("too many blocks in an MCU".into()));
        }
    }
    let total = mcus_x * mcus_y;
    let mut r = BitReader::new(data, pos);
    let mut pred = vec![0i32; sh.comps.len()];
    let mut eobrun: u32 = 0;
    let mut next_rst = 0u8;
    let mut left = restart_interval;
    // libjpeg's `insufficient_data`: once a block needed bits past the end of the entropy data
    // (the next marker), that block was completed with zero bits and the MCUs after it, up to
    // the next restart marker, are not decoded at all (grey for a sequential file, unchanged
    // coefficients for a progressive scan). libjpeg only warns, and PIL reads the image.
    let mut insufficient = false;

    for mcu in 0..total {
        if restart_interval > 0 {
            if left == 0 {
                let p = r.to_marker()?;
                let (resume, cleared) = resync(data, p, next_rst);
                r = BitReader::new(data, resume);
                next_rst = (next_rst + 1) & 7;
                pred.iter_mut().for_each(|p| *p = 0);
                eobrun = 0;
                left = restart_interval;
                // libjpeg clears its out-of-data flag unless it was left facing a marker.
                if cleared {
                    insufficient = false;
                }
            }
            left -= 1;
        }
        if insufficient {
            continue;
        }
        let (mx, my) = (mcu % mcus_x, mcu / mcus_x);
        for (si, &ci) in sh.comps.iter().enumerate() {
            let c = &frame.comps[ci];
            let (bh, bv) = if interleaved { (c.h, c.v) } else { (1, 1) };
            for by in 0..bv {
                for bx in 0..bh {
                    let (x, y) = if interleaved {
                        (mx * c.h + bx, my * c.v + by)
                    } else {
                        (mx, my)
                    };
                    let off = (y * c.bstride + x) * 64;
                    let blk: &mut [i16; 64] = (&mut coefs.blocks[ci][off..off + 64])
                        .try_into()
                        .expect("64 coefficients");
                    if !progressive {
                        decode_baseline(
                            &mut r,
                            dcs[si].expect("dc"),
                            acs[si].expect("ac"),
                            &mut pred[si],
                            blk,
                        )?;
                    } else if ss == 0 {
                        if ah == 0 {
                            let s = r.decode(dcs[si].expect("dc"))? as u32;
                            if s > 15 {
                                return Err(JpegError::Corrupt("bad DC difference".into()));
                            }
                            pred[si] = pred[si].wrapping_add(r.receive_extend(s));
                            blk[0] = pred[si].wrapping_shl(al) as i16;
                        } else if r.bit() {
                            blk[0] |= (1i32 << al) as i16;
                        }
                    } else if ah == 0 {
                        ac_first(&mut r, acs[si].expect("ac"), ss, se, al, &mut eobrun, blk)?;
                    } else {
                        ac_refine(&mut r, acs[si].expect("ac"), ss, se, al, &mut eobrun, blk)?;
                    }
                }
            }
        }
        if r.at_eof {
            return Err(JpegError::Truncated(
                "scan data runs to the end of the file".into(),
            ));
        }
        insufficient = r.overran();
    }
    r.to_marker()
}

/// Where the entropy data resumes at the end of a restart interval, as libjpeg's
/// `read_restart_marker` and `jpeg_resync_to_restart` decide it. The marker at `p` is the
/// expected RSTn: resume after it. Otherwise: an RST one or two ahead, or any valid non-RST
/// marker, is left in place (the interval is decoded from no data); an invalid code
/// (below SOF0) or an RST one or two behind is skipped for the next marker; any other RST is
/// discarded and decoding resumes after it. `(position, whether decoding resumes after a
/// marker)`; at the end of the data the reader is put there (and reports it).
fn resync(data: &[u8], p: usize, desired: u8) -> (usize, bool) {
    let Some((mut at, mut code, mut after)) = next_marker(data, p) else {
        return (data.len(), false);
    };
    if code == 0xD0 + desired {
        return (after, true);
    }
    loop {
        let action = if code < 0xC0 {
            2
        } else if !(0xD0..=0xD7).contains(&code) {
            3
        } else {
            let n = code - 0xD0;
            if n == (desired + 1) & 7 || n == (desired + 2) & 7 {
                3
            } else if n == (desired + 7) & 7 || n == (desired + 6) & 7 {
                2
            } else {
                1
            }
        };
        match action {
            1 => return (after, true),
            2 => match next_marker(data, after) {
                Some(m) => (at, code, after) = m,
                None => return (data.len(), false),
            },
            _ => return (at, false),
        }
    }
}

#[inline(always)]
fn decode_baseline(
    r: &mut BitReader,
    dc: &HuffTable,
    ac: &HuffTable,
    pred: &mut i32,
    blk: &mut [i16; 64],
) -> Result<(), JpegError> {
    let s = r.decode(dc)? as u32;
    if s > 15 {
        return Err(JpegError::Corrupt("bad DC difference".into()));
    }
    *pred = pred.wrapping_add(r.receive_extend(s));
    blk[0] = *pred as i16;
    let mut k = 1;
    while k < 64 {
        if let Some((run, v)) = r.fast_ac(ac) {
            if v == 0 {
                break;
            }
            k += run;
            blk[ZIGZAG[k.min(63)]] = v as i16;
            k += 1;
            continue;
        }
        let rs = r.decode(ac)?;
        let (run, size) = ((rs >> 4) as usize, (rs & 15) as u32);
        if size == 0 {
            if run != 15 {
                break;
            }
            k += 16;
            continue;
        }
        // A run past the end writes coefficient 63, as libjpeg's padded order table does.
        k += run;
        blk[ZIGZAG[k.min(63)]] = r.receive_extend(size) as i16;
        k += 1;
    }
    Ok(())
}

fn ac_first(
    r: &mut BitReader,
    ac: &HuffTable,
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
    blk: &mut [i16; 64],
) -> Result<(), JpegError> {
    if *eobrun > 0 {
        *eobrun -= 1;
        return Ok(());
    }
    let mut k = ss;
    while k <= se {
        if let Some((run, v)) = r.fast_ac(ac) {
            if v == 0 {
                // EOB0: the run of empty bands is this block only (libjpeg's EOBRUN = 0).
                break;
            }
            k += run;
            blk[ZIGZAG[k.min(63)]] = (v * (1 << al)) as i16;
            k += 1;
            continue;
        }
        let rs = r.decode(ac)?;
        let (run, size) = ((rs >> 4) as u32, (rs & 15) as u32);
        if size == 0 {
            if run == 15 {
                k += 16;
                continue;
            }
            *eobrun = (1 << run) + r.bits(run) - 1;
            break;
        }
        k += run as usize;
        blk[ZIGZAG[k.min(63)]] = (r.receive_extend(size) * (1 << al)) as i16;
        k += 1;
    }
    Ok(())
}

fn ac_refine(
    r: &mut BitReader,
    ac: &HuffTable,
    ss: usize,
    se: usize,
    al: u32,
    eobrun: &mut u32,
    blk: &mut [i16; 64],
) -> Result<(), JpegError> {
    let p1 = 1i16 << al;
    let m1 = (-1i16) << al;
    let refine = |r: &mut BitReader, c: &mut i16| {
        if r.bit() && (*c & p1) == 0 {
            // libjpeg adds in int and stores back to its 16-bit JCOEF: a coefficient already at
            // the edge of i16 (corrupt data) wraps. Found by fuzzing (an overflow panic with
            // debug assertions; fuzz/regressions/jpeg_decode/).
            *c = c.wrapping_add(if *c >= 0 { p1 } else { m1 });
        }
    };
    let mut k = ss;
    if *eobrun == 0 {
        while k <= se {
            let rs = r.decode(ac)?;
            let (mut run, size) = ((rs >> 4) as i32, (rs & 15) as u32);
            let mut val = 0i16;
            if size != 0 {
                // The standard allows only magnitude 1 here; libjpeg reads one sign bit anyway.
                val = if r.bit() { p1 } else { m1 };
            } else if run != 15 {
                *eobrun = (1 << run) + r.bits(run as u32);
                break;
            }
            while k <= se {
                let c = &mut blk[ZIGZAG[k]];
                if *c != 0 {
                    refine(r, c);
                } else {
                    run -= 1;
                    if run < 0 {
                        break;
                    }
                }
                k += 1;
            }
            if val != 0 {
                blk[ZIGZAG[k.min(63)]] = val;
            }
            k += 1;
        }
    }
    if *eobrun > 0 {
        while k <= se {
            let c = &mut blk[ZIGZAG[k]];
            if *c != 0 {
                refine(r, c);
            }
            k += 1;
        }
        *eobrun -= 1;
    }
    Ok(())
}
