//! Output buffers that kernels write before anything reads them.
//!
//! A kernel's output used to be a `Vec<f32>` grown with `set_len` over uninitialised capacity
//! and then sliced as `&mut [f32]`: undefined behaviour in Rust's rules (a reference to `f32`
//! must point to initialised memory) even though every element was written before it was read.
//! Zeroing the buffer first is sound but costs a pass over memory per layer (measured at 2–3% of
//! a forward pass). Here the capacity stays `MaybeUninit<f32>` until the kernel has written it:
//! [`filled_vec`] hands the kernel an [`Out`] — stores only, through a raw pointer — and marks
//! the vector's length only after the kernel returns. Debug builds and the kernels' own tests
//! fill the capacity with NaN first, so that an element a kernel forgot to write shows up in a
//! comparison instead of passing as whatever the allocator left there.

use std::marker::PhantomData;
use std::mem::MaybeUninit;

/// `len` floats a kernel is to write, initialised or not: only stores go through it until the
/// owner, knowing every element written, calls [`Out::assume_init`].
#[derive(Debug)]
pub struct Out<'a> {
    ptr: *mut f32,
    len: usize,
    _borrow: PhantomData<&'a mut [MaybeUninit<f32>]>,
}

impl<'a> Out<'a> {
    /// Memory that may not be initialised yet.
    pub fn uninit(s: &'a mut [MaybeUninit<f32>]) -> Self {
        Out {
            ptr: s.as_mut_ptr().cast(),
            len: s.len(),
            _borrow: PhantomData,
        }
    }

    /// Initialised memory (a scratch buffer): stores of `f32` keep it initialised, so this is
    /// safe, and [`Out::assume_init`] on it trivially holds.
    pub fn init(s: &'a mut [f32]) -> Self {
        Out {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _borrow: PhantomData,
        }
    }

    /// A view of `len` floats at `ptr`.
    ///
    /// # Safety
    /// `ptr..ptr + len` must be valid for writes of `f32` (initialised or not) for `'a` and not
    /// be accessed through anything else meanwhile.
    pub unsafe fn from_raw(ptr: *mut f32, len: usize) -> Self {
        Out {
            ptr,
            len,
            _borrow: PhantomData,
        }
    }

    /// Number of floats.
    pub fn len(&self) -> usize {
        self.len
    }

    /// The first element, for kernels that store through pointers (bounds are theirs to keep:
    /// `len()` floats from here). Reading an element through it is allowed only after it has
    /// been written.
    pub fn as_mut_ptr(&mut self) -> *mut f32 {
        self.ptr
    }

    /// The floats in `r`, borrowed from this view. Panics when `r` is out of range.
    pub fn slice(&mut self, r: std::ops::Range<usize>) -> Out<'_> {
        assert!(
            r.start <= r.end && r.end <= self.len,
            "output range {r:?} of {}",
            self.len
        );
        Out {
            // SAFETY: `r.start <= len`, so the pointer stays inside (or one past) the view.
            ptr: unsafe { self.ptr.add(r.start) },
            len: r.end - r.start,
            _borrow: PhantomData,
        }
    }

    /// Writes `v` to element `i`. Panics when `i` is out of range.
    pub fn set(&mut self, i: usize, v: f32) {
        assert!(i < self.len, "output index {i} of {}", self.len);
        // SAFETY: `i < len`, and the view is valid for writes (its constructors' contract).
        unsafe { self.ptr.add(i).write(v) };
    }

    /// Writes `v` to every element.
    pub fn fill(&mut self, v: f32) {
        for i in 0..self.len {
            // SAFETY: `i < len`, and the view is valid for writes (its constructors' contract).
            unsafe { self.ptr.add(i).write(v) };
        }
    }

    /// Copies `src` (of this view's length) in.
    pub fn copy_from(&mut self, src: &[f32]) {
        assert_eq!(src.len(), self.len, "output copy: lengths");
        // SAFETY: `len` floats are writable here and `src` (a shared borrow) cannot overlap
        // this exclusive view.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), self.ptr, self.len) };
    }

    /// The view as initialised floats, once they have all been written.
    ///
    /// # Safety
    /// Every one of the `len()` elements must have been written (or the view made by
    /// [`Out::init`]).
    pub unsafe fn assume_init(self) -> &'a mut [f32] {
        // SAFETY: valid for `'a`, exclusive (constructors' contract), initialised (the caller's).
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

/// A `Vec<f32>` of `len` elements that `fill` writes, every one of them, through the [`Out`] it
/// is handed; the length is set once `fill` returns. No zeroing pass.
///
/// # Safety
/// `fill` must write all `len` elements (in debug builds an element it misses is NaN; in
/// release builds it would be read uninitialised).
pub unsafe fn filled_vec(len: usize, fill: impl FnOnce(Out<'_>)) -> Vec<f32> {
    let mut v: Vec<f32> = Vec::with_capacity(len);
    let spare = &mut v.spare_capacity_mut()[..len];
    if cfg!(any(test, debug_assertions)) {
        spare.fill(MaybeUninit::new(f32::NAN));
    }
    fill(Out::uninit(spare));
    // SAFETY: capacity is at least `len`, and `fill` wrote every element (the caller's
    // contract).
    unsafe { v.set_len(len) };
    v
}

/// An output pointer shared by parallel tasks, each of which writes its own disjoint part
/// (every user states which).
pub(crate) struct SharedOut(pub *mut f32);
// SAFETY: the tasks sharing the pointer write disjoint elements, so no element is accessed by
// two threads; `f32` itself is `Send`.
unsafe impl Sync for SharedOut {}
// SAFETY: as for `Sync`.
unsafe impl Send for SharedOut {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_vec_keeps_what_was_written() {
        // SAFETY: the closure writes all 10 elements.
        let v = unsafe {
            filled_vec(10, |mut o| {
                o.slice(0..4).fill(1.0);
                o.slice(4..10).copy_from(&[2.0; 6]);
            })
        };
        assert_eq!(v, [1., 1., 1., 1., 2., 2., 2., 2., 2., 2.]);
    }

    #[test]
    fn a_missed_element_is_nan_in_tests() {
        // Deliberately misses the last element: sound here only because test builds poison
        // the capacity with NaN first (the case `filled_vec`'s contract forbids).
        let v = unsafe { filled_vec(3, |mut o| o.slice(0..2).fill(0.5)) };
        assert!(v[2].is_nan());
    }

    #[test]
    #[should_panic(expected = "output range")]
    fn out_of_range_slice_panics() {
        let mut buf = [0f32; 4];
        let mut o = Out::init(&mut buf);
        let _ = o.slice(2..5);
    }
}
