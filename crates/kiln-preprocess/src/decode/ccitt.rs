//! CCITT bilevel ("fax") data in TIFF strips, decoded as libtiff decodes it, because libtiff is
//! what PIL reads these files with: Modified Huffman (compression 2), T.4 Group 3 1-D and 2-D
//! (compression 3 with `T4Options` bit 0) and T.6 Group 4 (compression 4).
//!
//! Being *libtiff-exact* matters beyond valid files: libtiff recovers from damage in ways that
//! decide the pixels PIL hands to a training pipeline. A bad code word ends the row (the rest
//! of it is filled by the run clean-up, and decoding goes on with the next row); a row whose
//! runs do not add up to the width is trimmed or padded; data that ends early is an error for
//! MH and Group 3 but not for Group 4 once one row is decoded (libtiff's "don't error on
//! badly-terminated strips"), whose remaining rows stay white here. Group 3 data that turns
//! out to have no EOL codes is decoded again from the strip's start without them, as libtiff
//! retries it. This module follows that state machine: the run arrays, the `a0`/`b1` changing
//! elements, the clean-up rules and the bit reader's zero padding at the end of the data.
//!
//! Only the Huffman code *tables* come from the `fax` crate (its decoder has other recovery
//! rules); the lookup tables built from them are indexed like libtiff's: a code's bits followed
//! by every possible continuation, so an invalid prefix maps to an entry of width 0.

use std::sync::OnceLock;

/// Which CCITT scheme a strip is coded with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scheme {
    /// Modified Huffman: 1-D rows, no EOL codes, each row starts on a byte boundary.
    Mh,
    /// T.4 Group 3: EOL before each row; with `two_d` a tag bit selects 1-D or 2-D per row.
    G3 { two_d: bool },
    /// T.6 Group 4: 2-D rows against the previous row, the first against an all-white row.
    G4,
}

/// A lookup entry's meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// No code starts with these bits.
    Null,
    Pass,
    Horiz,
    V0,
    /// Vertical, `b1 + param`.
    Vr,
    /// Vertical, `b1 - param`.
    Vl,
    /// Extension (uncompressed mode), which libtiff does not support.
    Ext,
    /// A terminating run length (0..=63).
    Term,
    /// A make-up run length (64..=2560), added to the run in progress.
    MakeUp,
    /// An EOL code (its leading zeros).
    Eol,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    state: State,
    width: u8,
    param: u16,
}

const NULL: Entry = Entry {
    state: State::Null,
    width: 0,
    param: 0,
};

struct Tables {
    /// 2-D mode codes, indexed by the next 7 bits.
    main: Vec<Entry>,
    /// White run codes, by the next 12 bits.
    white: Vec<Entry>,
    /// Black run codes, by the next 13 bits.
    black: Vec<Entry>,
}

/// Puts `e` at every index whose leading `len` of `size` bits are `code`.
fn put(t: &mut [Entry], size: u8, code: u16, len: u8, e: Entry) {
    let shift = size - len;
    let base = (code as usize) << shift;
    for slot in &mut t[base..base + (1usize << shift)] {
        *slot = e;
    }
}

fn tables() -> &'static Tables {
    static T: OnceLock<Tables> = OnceLock::new();
    T.get_or_init(|| {
        use fax::maps::{black, mode, white, Mode};
        let mut main = vec![NULL; 1 << 7];
        for (m, bits) in mode::ENTRIES.iter() {
            let (state, param) = match *m {
                Mode::Pass => (State::Pass, 0),
                Mode::Horizontal => (State::Horiz, 0),
                Mode::Vertical(0) => (State::V0, 0),
                Mode::Vertical(d) if d > 0 => (State::Vr, d as u16),
                Mode::Vertical(d) => (State::Vl, (-d) as u16),
                Mode::Extension => (State::Ext, 0),
                // EOL (12 bits) is seen through its first 7 zeros, below.
                Mode::EOF => continue,
            };
            let e = Entry {
                state,
                width: bits.len,
                param,
            };
            put(&mut main, 7, bits.data, bits.len, e);
        }
        let eol = |width| Entry {
            state: State::Eol,
            width,
            param: 0,
        };
        put(&mut main, 7, 0, 7, eol(7));
        let runs = |size: u8, entries: &[(u16, fax::Bits)]| {
            let mut t = vec![NULL; 1 << size];
            for (v, bits) in entries {
                let state = if *v < 64 { State::Term } else { State::MakeUp };
                let e = Entry {
                    state,
                    width: bits.len,
                    param: *v,
                };
                put(&mut t, size, bits.data, bits.len, e);
            }
            // Eleven zeros: the start of an EOL.
            put(&mut t, size, 0, 11, eol(11));
            t
        };
        Tables {
            main,
            white: runs(12, &white::ENTRIES),
            black: runs(13, &black::ENTRIES),
        }
    })
}

/// libtiff's bit reader: most significant bit first (after FillOrder reversal), and at the end
/// of the data a request for more bits than are left is padded with zeros, once; only a request
/// with no bits left at all is the end.
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
    acc: u64,
    avail: u32,
    reversed: bool,
}

impl<'a> Bits<'a> {
    fn new(data: &'a [u8], reversed: bool) -> Self {
        Bits {
            data,
            pos: 0,
            acc: 0,
            avail: 0,
            reversed,
        }
    }

    /// Makes `n` (at most 16) bits available; `false` at the end of the data.
    fn need(&mut self, n: u32) -> bool {
        while self.avail < n {
            match self.data.get(self.pos) {
                Some(&b) => {
                    let b = if self.reversed { b.reverse_bits() } else { b };
                    self.acc = (self.acc << 8) | b as u64;
                    self.avail += 8;
                    self.pos += 1;
                }
                None if self.avail == 0 => return false,
                None => {
                    self.acc <<= n - self.avail;
                    self.avail = n;
                }
            }
        }
        true
    }

    /// The next `n` bits; `need(n)` must have succeeded.
    fn peek(&self, n: u32) -> u32 {
        ((self.acc >> (self.avail - n)) & ((1u64 << n) - 1)) as u32
    }

    fn consume(&mut self, n: u32) {
        self.avail = self.avail.saturating_sub(n);
        self.acc &= (1u64 << self.avail) - 1;
    }

    /// Looks `size` bits up in `table` and consumes the entry's width; `None` at the end.
    fn lookup(&mut self, table: &[Entry], size: u32) -> Option<Entry> {
        if !self.need(size) {
            return None;
        }
        let e = table[self.peek(size) as usize];
        self.consume(e.width as u32);
        Some(e)
    }
}

/// Why a strip could not be decoded (libtiff returns an error, so PIL refuses the file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FaxError {
    /// The data ended before the last row of the strip (MH, Group 3; Group 4 before any row).
    Truncated { row: usize },
    /// More colour changes in a row than libtiff's run array holds.
    Overflow { row: usize },
}

impl std::fmt::Display for FaxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FaxError::Truncated { row } => write!(f, "CCITT data ends early (row {row})"),
            FaxError::Overflow { row } => {
                write!(f, "CCITT data: too many colour changes in row {row}")
            }
        }
    }
}

/// How a row expansion ended.
enum Flow {
    /// The row is complete (possibly after recovering from a bad code or an EOL).
    Done,
    /// The data ended inside the row.
    Eof,
}

/// How one run's codes ended.
enum RunEnd {
    /// A terminating code: the run is set.
    Term,
    /// An EOL code.
    Eol,
    /// A bit pattern that is no code of the table.
    Bad,
    /// The end of the data.
    Eof,
}

/// Row overflow, carried out of the expanders with `?`.
struct Overflow;

/// A fax decoder for one image: the run arrays and the no-EOL mode persist from strip to strip,
/// as they do in libtiff's codec state.
pub(crate) struct Fax {
    scheme: Scheme,
    width: u32,
    /// Length of one run array (libtiff's `nruns`).
    nruns: usize,
    /// Both run arrays: the current row's and the reference row's, swapped by offset.
    runs: Vec<u32>,
    /// Group 3 data found to have no EOL codes.
    no_eol: bool,
    /// The strip buffer, reused from strip to strip as PIL reuses its own: rows a Group 4
    /// strip ends before keep what the previous strip left there.
    buf: Vec<u8>,
}

/// The changing-element state of one row (libtiff's `a0`, `RunLength`, `pa`, `b1`, `pb`).
struct Row {
    a0: i32,
    run_length: i32,
    pa: usize,
    thisrun: usize,
    b1: i32,
    pb: usize,
    /// Start of the reference row's run array (libtiff's `sp->refruns`).
    refruns: usize,
    lastx: i32,
}

impl Fax {
    /// A decoder for rows of `width` pixels.
    pub(crate) fn new(scheme: Scheme, width: u32) -> Self {
        let two_d = matches!(scheme, Scheme::G3 { two_d: true } | Scheme::G4);
        let mut nruns = (width as usize + 1).div_ceil(32) * 32;
        if two_d {
            nruns *= 2;
        }
        Fax {
            scheme,
            width,
            nruns,
            runs: vec![0; 2 * nruns],
            no_eol: scheme == Scheme::Mh,
            buf: Vec::new(),
        }
    }

    /// Decodes one strip of `rows` rows into packed rows (most significant bit first, 1 for a
    /// black run), `ceil(width / 8)` bytes each. `reversed` is FillOrder 2.
    pub(crate) fn strip(
        &mut self,
        data: &[u8],
        rows: usize,
        reversed: bool,
    ) -> Result<Vec<u8>, FaxError> {
        let row_bytes = (self.width as usize).div_ceil(8);
        let mut out = std::mem::take(&mut self.buf);
        if out.len() < rows * row_bytes {
            out.resize(rows * row_bytes, 0);
        }
        let result = self.strip_into(data, rows, reversed, &mut out, row_bytes);
        let strip = out[..rows * row_bytes].to_vec();
        self.buf = out;
        result.map(|()| strip)
    }

    fn strip_into(
        &mut self,
        data: &[u8],
        rows: usize,
        reversed: bool,
        out: &mut [u8],
        row_bytes: usize,
    ) -> Result<(), FaxError> {
        // libtiff's per-strip reset: the reference row is all white.
        let mut cur = 0usize;
        let mut refr = self.nruns;
        self.runs[refr] = self.width;
        self.runs[refr + 1] = 0;
        let mut y = 0usize;
        'retry: loop {
            let mut bits = Bits::new(data, reversed);
            let mut eolcnt = 0u32;
            while y < rows {
                let mut r = Row {
                    a0: 0,
                    run_length: 0,
                    pa: cur,
                    thisrun: cur,
                    b1: 0,
                    pb: refr,
                    refruns: refr,
                    lastx: self.width as i32,
                };
                let of = FaxError::Overflow { row: y };
                let row_out = &mut out[y * row_bytes..(y + 1) * row_bytes];
                match self.scheme {
                    Scheme::Mh => {
                        let flow = self.expand_1d(&mut r, &mut bits, &mut eolcnt);
                        if let Flow::Eof = flow.map_err(|_| of)? {
                            return Err(FaxError::Truncated { row: y });
                        }
                        self.fill(row_out, r.thisrun, r.pa);
                        // Each MH row starts on a byte boundary.
                        bits.consume(bits.avail % 8);
                    }
                    Scheme::G3 { two_d } => {
                        match self.sync_eol(&mut bits, &mut eolcnt) {
                            Sync::Ok => {}
                            // libtiff fails the strip (the row it paints then is discarded).
                            Sync::Eof => return Err(FaxError::Truncated { row: y }),
                            Sync::NoEol => {
                                // libtiff restarts the strip's data without EOLs; the rows
                                // already written stay, the next one is written next.
                                self.no_eol = true;
                                continue 'retry;
                            }
                        }
                        let is_1d = if two_d {
                            if !bits.need(1) {
                                return Err(FaxError::Truncated { row: y });
                            }
                            let b = bits.peek(1) == 1;
                            bits.consume(1);
                            b
                        } else {
                            true
                        };
                        r.b1 = self.get(r.pb) as i32;
                        r.pb += 1;
                        let flow = if is_1d {
                            self.expand_1d(&mut r, &mut bits, &mut eolcnt)
                        } else {
                            self.expand_2d(&mut r, &mut bits, &mut eolcnt)
                        }
                        .map_err(|_| of)?;
                        if let Flow::Eof = flow {
                            return Err(FaxError::Truncated { row: y });
                        }
                        self.fill(row_out, r.thisrun, r.pa);
                        if two_d {
                            if r.pa < r.thisrun + self.nruns {
                                self.set(&mut r, 0).map_err(|_| of)?;
                            }
                            std::mem::swap(&mut cur, &mut refr);
                        }
                    }
                    Scheme::G4 => {
                        r.b1 = self.get(r.pb) as i32;
                        r.pb += 1;
                        let flow = self
                            .expand_2d(&mut r, &mut bits, &mut eolcnt)
                            .map_err(|_| of)?;
                        self.fill(row_out, r.thisrun, r.pa);
                        if matches!(flow, Flow::Eof) || eolcnt != 0 {
                            // End of data or EOFB: this row as far as it goes, and the strip
                            // ends here; an error only when no row was completed.
                            return if y > 0 {
                                Ok(())
                            } else {
                                Err(FaxError::Truncated { row: y })
                            };
                        }
                        self.fill(row_out, r.thisrun, r.pa);
                        self.set(&mut r, 0).map_err(|_| of)?;
                        std::mem::swap(&mut cur, &mut refr);
                    }
                }
                y += 1;
            }
            return Ok(());
        }
    }

    fn get(&self, i: usize) -> u32 {
        // libtiff reads the reference row without a bound; past the arrays is white here.
        self.runs.get(i).copied().unwrap_or(0)
    }

    /// libtiff's `SETVALUE`: ends the run in progress at `a0 + x`.
    fn set(&mut self, r: &mut Row, x: i32) -> Result<(), Overflow> {
        if r.pa >= r.thisrun + self.nruns || r.pa >= self.runs.len() {
            return Err(Overflow);
        }
        self.runs[r.pa] = (r.run_length as u32).wrapping_add(x as u32);
        r.pa += 1;
        r.a0 = r.a0.wrapping_add(x);
        r.run_length = 0;
        Ok(())
    }

    /// libtiff's `CLEANUP_RUNS`: makes the row's runs add up to the width, trimming runs past
    /// it or adding a final white (or black, by parity) run.
    fn cleanup(&mut self, r: &mut Row) -> Result<(), Overflow> {
        if r.run_length != 0 {
            self.set(r, 0)?;
        }
        if r.a0 != r.lastx {
            while r.a0 > r.lastx && r.pa > r.thisrun {
                r.pa -= 1;
                r.a0 = r.a0.wrapping_sub(self.runs[r.pa] as i32);
            }
            if r.a0 < r.lastx {
                if r.a0 < 0 {
                    r.a0 = 0;
                }
                if (r.pa - r.thisrun) & 1 == 1 {
                    self.set(r, 0)?;
                }
                self.set(r, r.lastx - r.a0)?;
            } else if r.a0 > r.lastx {
                self.set(r, r.lastx)?;
                self.set(r, 0)?;
            }
        }
        Ok(())
    }

    /// One run of the given colour: make-up codes then a terminating code.
    fn run(&mut self, r: &mut Row, bits: &mut Bits, black: bool) -> Result<RunEnd, Overflow> {
        let (table, size) = if black {
            (&tables().black, 13)
        } else {
            (&tables().white, 12)
        };
        loop {
            let Some(e) = bits.lookup(table, size) else {
                return Ok(RunEnd::Eof);
            };
            match e.state {
                State::Term => {
                    self.set(r, e.param as i32)?;
                    return Ok(RunEnd::Term);
                }
                State::MakeUp => {
                    r.a0 = r.a0.wrapping_add(e.param as i32);
                    r.run_length = r.run_length.wrapping_add(e.param as i32);
                }
                State::Eol => return Ok(RunEnd::Eol),
                _ => return Ok(RunEnd::Bad),
            }
        }
    }

    /// Ends the row: libtiff's `CLEANUP_RUNS`, then how the row ended.
    fn end(&mut self, r: &mut Row, flow: Flow) -> Result<Flow, Overflow> {
        self.cleanup(r)?;
        Ok(flow)
    }

    /// libtiff's `EXPAND1D`: alternating white and black runs to the end of the row.
    fn expand_1d(
        &mut self,
        r: &mut Row,
        bits: &mut Bits,
        eolcnt: &mut u32,
    ) -> Result<Flow, Overflow> {
        loop {
            for black in [false, true] {
                match self.run(r, bits, black)? {
                    RunEnd::Eof => return self.end(r, Flow::Eof),
                    RunEnd::Eol => {
                        *eolcnt = 1;
                        return self.end(r, Flow::Done);
                    }
                    RunEnd::Bad => return self.end(r, Flow::Done),
                    RunEnd::Term => {}
                }
                if r.a0 >= r.lastx {
                    return self.end(r, Flow::Done);
                }
            }
            // A zero-length black and white pair changes nothing: drop it.
            if r.pa >= r.thisrun + 2 && self.runs[r.pa - 1] == 0 && self.runs[r.pa - 2] == 0 {
                r.pa -= 2;
            }
        }
    }

    /// libtiff's `CHECK_b1`: moves `b1` to the first change on the reference row past `a0`.
    fn check_b1(&self, r: &mut Row) -> Result<(), Overflow> {
        if r.pa != r.thisrun {
            while r.b1 <= r.a0 && r.b1 < r.lastx {
                self.check_pb(r, 1)?;
                let step = self.runs[r.pb].wrapping_add(self.runs[r.pb + 1]);
                r.b1 = r.b1.wrapping_add(step as i32);
                r.pb += 2;
            }
        }
        Ok(())
    }

    /// libtiff 4.7's guard: reading `pb[ahead]` would leave the reference row's array.
    fn check_pb(&self, r: &Row, ahead: usize) -> Result<(), Overflow> {
        if r.pb.wrapping_add(ahead) >= r.refruns + self.nruns {
            return Err(Overflow);
        }
        Ok(())
    }

    fn advance_b1(&self, r: &mut Row) {
        r.b1 = r.b1.wrapping_add(self.get(r.pb) as i32);
        r.pb += 1;
    }

    /// libtiff's `EXPAND2D`: mode codes against the reference row to the end of the row.
    fn expand_2d(
        &mut self,
        r: &mut Row,
        bits: &mut Bits,
        eolcnt: &mut u32,
    ) -> Result<Flow, Overflow> {
        let t = tables();
        while r.a0 < r.lastx {
            if r.pa >= r.thisrun + self.nruns {
                return Err(Overflow);
            }
            let Some(e) = bits.lookup(&t.main, 7) else {
                return self.end(r, Flow::Eof);
            };
            match e.state {
                State::Pass => {
                    self.check_b1(r)?;
                    self.check_pb(r, 1)?;
                    self.advance_b1(r);
                    r.run_length = r.run_length.wrapping_add(r.b1.wrapping_sub(r.a0));
                    r.a0 = r.b1;
                    self.advance_b1(r);
                }
                State::Horiz => {
                    // The first run has the colour the row is at: black after an odd count.
                    let first_black = (r.pa - r.thisrun) & 1 == 1;
                    for black in [first_black, !first_black] {
                        match self.run(r, bits, black)? {
                            RunEnd::Eof => return self.end(r, Flow::Eof),
                            // A bad code (an EOL here counts as one): end the row.
                            RunEnd::Eol | RunEnd::Bad => return self.end(r, Flow::Done),
                            RunEnd::Term => {}
                        }
                    }
                    self.check_b1(r)?;
                }
                State::V0 | State::Vr => {
                    self.check_b1(r)?;
                    let d = if e.state == State::Vr {
                        e.param as i32
                    } else {
                        0
                    };
                    self.set(r, r.b1.wrapping_sub(r.a0).wrapping_add(d))?;
                    self.check_pb(r, 0)?;
                    self.advance_b1(r);
                }
                State::Vl => {
                    self.check_b1(r)?;
                    if r.b1 < r.a0.wrapping_add(e.param as i32) {
                        // A change left of a0: a bad code word, the row ends.
                        return self.end(r, Flow::Done);
                    }
                    self.set(r, r.b1.wrapping_sub(r.a0).wrapping_sub(e.param as i32))?;
                    r.pb = r.pb.wrapping_sub(1);
                    r.b1 = r.b1.wrapping_sub(self.get(r.pb) as i32);
                }
                State::Ext | State::Eol => {
                    self.push_rest(r)?;
                    if e.state == State::Eol {
                        if !bits.need(4) {
                            return self.end(r, Flow::Eof);
                        }
                        bits.consume(4);
                        *eolcnt = 1;
                    }
                    return self.end(r, Flow::Done);
                }
                _ => return self.end(r, Flow::Done),
            }
        }
        if r.run_length != 0 {
            if r.run_length.wrapping_add(r.a0) < r.lastx {
                // A final V0 is expected.
                if !bits.need(1) {
                    return self.end(r, Flow::Eof);
                }
                if bits.peek(1) == 0 {
                    return self.end(r, Flow::Done);
                }
                bits.consume(1);
            }
            self.set(r, 0)?;
        }
        self.end(r, Flow::Done)
    }

    /// The rest of the row as one run, unchecked against `a0` (libtiff's `*pa++ = lastx - a0`).
    fn push_rest(&mut self, r: &mut Row) -> Result<(), Overflow> {
        let slot = self.runs.get_mut(r.pa).ok_or(Overflow)?;
        *slot = r.lastx.wrapping_sub(r.a0) as u32;
        r.pa += 1;
        Ok(())
    }

    /// libtiff's `SYNC_EOL`: skips to just past the next EOL code (unless one was just read).
    fn sync_eol(&self, bits: &mut Bits, eolcnt: &mut u32) -> Sync {
        if self.no_eol {
            return Sync::Ok;
        }
        if *eolcnt == 0 {
            loop {
                if !bits.need(11) {
                    return Sync::Eof;
                }
                if bits.peek(11) == 0 {
                    break;
                }
                bits.consume(1);
            }
        }
        loop {
            if !bits.need(8) {
                return Sync::NoEol;
            }
            if bits.peek(8) != 0 {
                break;
            }
            bits.consume(8);
        }
        while bits.peek(1) == 0 {
            bits.consume(1);
        }
        bits.consume(1);
        *eolcnt = 0;
        Sync::Ok
    }

    /// libtiff's `_TIFFFax3fillruns`: paints the row from its runs (white first), clamping the
    /// runs to the width in place, as the reference row then sees them.
    fn fill(&mut self, row: &mut [u8], start: usize, mut end: usize) {
        if (end - start) & 1 == 1 {
            if let Some(s) = self.runs.get_mut(end) {
                *s = 0;
            }
            end += 1;
        }
        let lastx = self.width;
        let mut x = 0u32;
        let mut i = start;
        while i < end {
            for black in [false, true] {
                let Some(&run0) = self.runs.get(i) else {
                    return;
                };
                let mut run = run0;
                if x.wrapping_add(run) > lastx || run > lastx {
                    run = lastx - x;
                    self.runs[i] = run;
                }
                if black {
                    for px in x..x + run {
                        row[(px / 8) as usize] |= 0x80 >> (px % 8);
                    }
                } else {
                    for px in x..x + run {
                        row[(px / 8) as usize] &= !(0x80 >> (px % 8));
                    }
                }
                x += run;
                i += 1;
            }
        }
    }
}

/// How an EOL search ended.
enum Sync {
    Ok,
    /// No bits left before an EOL was found.
    Eof,
    /// An EOL's zeros were found but no 1 bit follows before the end: data without EOLs.
    NoEol,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes codes MSB first.
    struct W(Vec<u8>, u32);
    impl W {
        fn put(&mut self, b: fax::Bits) {
            for i in (0..b.len).rev() {
                if self.1.is_multiple_of(8) {
                    self.0.push(0);
                }
                if (b.data >> i) & 1 == 1 {
                    *self.0.last_mut().unwrap() |= 0x80 >> (self.1 % 8);
                }
                self.1 += 1;
            }
        }
        fn run(&mut self, black: bool, mut n: u16) {
            let enc = |v| {
                if black {
                    fax::maps::black::encode(v)
                } else {
                    fax::maps::white::encode(v)
                }
                .unwrap()
            };
            while n >= 64 {
                let m = (n / 64 * 64).min(2560);
                self.put(enc(m));
                n -= m;
            }
            self.put(enc(n));
        }
    }

    #[test]
    fn mh_rows_are_byte_aligned_runs() {
        // Width 20: row 0 = 5 white, 10 black, 5 white; row 1 = 0 white, 20 black.
        let mut w = W(vec![], 0);
        for (white, black, white2) in [(5, 10, 5), (0, 20, 0)] {
            w.run(false, white);
            w.run(true, black);
            if white2 > 0 {
                w.run(false, white2);
            }
            w.1 = w.1.div_ceil(8) * 8;
        }
        let out = Fax::new(Scheme::Mh, 20).strip(&w.0, 2, false).unwrap();
        // 3 bytes per row.
        assert_eq!(out, vec![0b0000_0111, 0b1111_1110, 0x00, 0xff, 0xff, 0xf0]);
        // Reversed bit order reads the same after reversing the bytes.
        let rev: Vec<u8> = w.0.iter().map(|b| b.reverse_bits()).collect();
        let out2 = Fax::new(Scheme::Mh, 20).strip(&rev, 2, true).unwrap();
        assert_eq!(out, out2);
        // Cut to one byte: row 0 ends in the reader's zero padding (read as an EOL, the rest
        // of the row white), and row 1 finds no bits at all: an error, as libtiff's.
        let short = Fax::new(Scheme::Mh, 20).strip(&w.0[..1], 2, false);
        assert_eq!(short, Err(FaxError::Truncated { row: 1 }));
    }

    #[test]
    fn g4_vertical_and_horizontal_modes() {
        use fax::maps::{mode, Mode};
        // Width 16. Row 0 (against white): horizontal 4 white + 8 black, then horizontal
        // 4 white + 0 black.  Row 1: V0 twice (same changes), then V0 (end).
        let mut w = W(vec![], 0);
        w.put(mode::encode(Mode::Horizontal).unwrap());
        w.run(false, 4);
        w.run(true, 8);
        w.put(mode::encode(Mode::Horizontal).unwrap());
        w.run(false, 4);
        w.run(true, 0);
        for _ in 0..3 {
            w.put(mode::encode(Mode::Vertical(0)).unwrap());
        }
        // EOFB.
        w.put(fax::maps::EOL);
        w.put(fax::maps::EOL);
        let out = Fax::new(Scheme::G4, 16).strip(&w.0, 2, false).unwrap();
        assert_eq!(out, vec![0x0f, 0xf0, 0x0f, 0xf0]);
        // Asking for a third row: the strip ends at EOFB; the third row keeps what the strip
        // buffer held (a fresh one: zero, white here).
        let out = Fax::new(Scheme::G4, 16).strip(&w.0, 3, false).unwrap();
        assert_eq!(out, vec![0x0f, 0xf0, 0x0f, 0xf0, 0, 0]);
    }
}
