//! Taking a std lock whose last holder panicked, in one place that says why that is safe.
//!
//! Every `Mutex`/`RwLock` in certkeeper guards plain data changed in one step while held (a map
//! insert or remove, a field or whole-value assignment, a `Vec` push or pop), never an
//! invariant spread over several steps. A panic while holding one therefore cannot leave the
//! data half-changed, and the poisoned lock is taken as it is, instead of turning one panic
//! into a panic of every later caller (a renewal task that panicked must not stop the API).
//! A new lock guarding a multi-step invariant must not use these helpers.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn read<T>(lock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn write<T>(lock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
