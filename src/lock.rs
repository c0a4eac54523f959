//! Ranked locks: the one lock order of sidb, written down here and checked in debug builds.
//!
//! Every lock that more than one module takes is a [`Mutex`] or [`RwLock`] of this module with a
//! [`Rank`]. A thread may take a lock only if its rank is strictly greater than the rank of every
//! ranked lock it already holds. Two locks of the same rank are never held together (two
//! collections' writer locks, for example). A cycle of waits needs some thread to take a lower
//! rank while holding a higher one, so following the rule rules out deadlocks among these locks.
//!
//! In debug builds (every `cargo test`) each thread keeps the ranks it holds; taking a lock out
//! of order counts a violation ([`violations`]) and panics with both names, at the moment the
//! order is broken, whether or not another thread happens to be in the way. Release builds
//! compile the check away: the types are then parking_lot's locks plus one byte.
//!
//! The order, outermost first (docs/architecture.md, "Locks", says what each guards):
//!
//! | rank | lock | may be held while |
//! |---|---|---|
//! | [`Rank::Catalog`] | `Store`'s catalogue lock (create, delete, checkpoint) | syncing sled, taking writer locks |
//! | [`Rank::Writer`] | a collection's writer lock (`Collection::writer`) | logging and applying one write |
//! | [`Rank::IndexDump`] | a collection index's dump directory (`CollectionIndex::dump`) | freezing the graphs, writing the dump |
//! | [`Rank::IndexState`] | a collection's retrieval state (`CollectionIndex::state`) | in-memory work only |
//! | [`Rank::QuerySample`] | a collection's query sample | copying vectors |
//! | [`Rank::Wal`] | the log's pending buffer | copying bytes |
//! | [`Rank::Registry`] | the maps of open things: collections, indexes, trainer slots | cloning an `Arc` |
//! | [`Rank::Leaf`] | small per-object state (a thread handle, a timestamp) | nothing else |

use std::ops::{Deref, DerefMut};
use std::time::Duration;

/// Where a lock stands in the order: a thread takes ranks in strictly increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Rank {
    /// The store's catalogue lock: serialises create, delete and checkpoints.
    Catalog = 10,
    /// A collection's writer lock: sequence order = log order = apply order.
    Writer = 20,
    /// A collection index's dump directory: one checkpoint at a time, none once deleted.
    IndexDump = 25,
    /// A collection's retrieval state (ids, tries, vectors, graphs).
    IndexState = 30,
    /// A collection's sample of searched query vectors.
    QuerySample = 40,
    /// The write-ahead log's pending buffer.
    Wal = 50,
    /// A map of open things (collections, indexes, trainer slots): held to clone an `Arc` out.
    Registry = 60,
    /// Small per-object state; nothing is taken under it.
    Leaf = 70,
}

#[cfg(debug_assertions)]
mod held {
    use super::Rank;
    use std::cell::RefCell;
    use std::sync::atomic::{AtomicU64, Ordering};

    pub static VIOLATIONS: AtomicU64 = AtomicU64::new(0);

    thread_local! {
        static HELD: RefCell<Vec<(Rank, &'static str)>> = const { RefCell::new(Vec::new()) };
    }

    /// Checks that `rank` may be taken now.
    pub fn check(rank: Rank, name: &'static str) {
        let worst = HELD.with(|h| h.borrow().iter().copied().max_by_key(|(r, _)| *r));
        if let Some((r, held)) = worst.filter(|(r, _)| *r >= rank) {
            VIOLATIONS.fetch_add(1, Ordering::SeqCst);
            panic!(
                "lock order violated: taking {name} ({rank:?}) while holding {held} ({r:?}); \
                 see src/lock.rs for the order"
            );
        }
    }

    pub fn push(rank: Rank, name: &'static str) {
        HELD.with(|h| h.borrow_mut().push((rank, name)));
    }

    pub fn pop(rank: Rank, name: &'static str) {
        HELD.with(|h| {
            let mut h = h.borrow_mut();
            if let Some(i) = h.iter().rposition(|x| *x == (rank, name)) {
                h.remove(i);
            }
        });
    }
}

/// Lock-order violations seen by this process (always 0 in release builds, which do not check).
pub fn violations() -> u64 {
    #[cfg(debug_assertions)]
    return held::VIOLATIONS.load(std::sync::atomic::Ordering::SeqCst);
    #[cfg(not(debug_assertions))]
    0
}

/// Proof that a ranked lock is held by this thread; forgets it when dropped.
struct Held {
    #[cfg(debug_assertions)]
    rank: Rank,
    #[cfg(debug_assertions)]
    name: &'static str,
}

impl Held {
    /// Checks the order (debug builds), then returns the proof to keep while the lock is held.
    fn check(rank: Rank, name: &'static str) -> impl FnOnce() -> Held {
        #[cfg(debug_assertions)]
        held::check(rank, name);
        move || Held::taken(rank, name)
    }

    #[cfg_attr(not(debug_assertions), allow(unused_variables))]
    fn taken(rank: Rank, name: &'static str) -> Held {
        #[cfg(debug_assertions)]
        held::push(rank, name);
        Held {
            #[cfg(debug_assertions)]
            rank,
            #[cfg(debug_assertions)]
            name,
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        #[cfg(debug_assertions)]
        held::pop(self.rank, self.name);
    }
}

/// A mutex with a place in the lock order.
pub struct Mutex<T> {
    rank: Rank,
    name: &'static str,
    inner: parking_lot::Mutex<T>,
}

/// The guard of a [`Mutex`].
pub struct MutexGuard<'a, T> {
    inner: parking_lot::MutexGuard<'a, T>,
    _held: Held,
}

impl<T> Mutex<T> {
    /// A mutex of `rank`; `name` appears in violation reports.
    pub const fn new(rank: Rank, name: &'static str, value: T) -> Self {
        Mutex {
            rank,
            name,
            inner: parking_lot::Mutex::new(value),
        }
    }

    /// Takes the lock, checking the order first (debug builds).
    pub fn lock(&self) -> MutexGuard<'_, T> {
        let held = Held::check(self.rank, self.name);
        let inner = self.inner.lock();
        MutexGuard {
            inner,
            _held: held(),
        }
    }

    /// Takes the lock if it is free. Never waits, so it cannot deadlock: the order is not
    /// checked, but the lock counts as held for the locks taken under it.
    pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
        let inner = self.inner.try_lock()?;
        Some(MutexGuard {
            inner,
            _held: Held::taken(self.rank, self.name),
        })
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Mutex<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mutex")
            .field("rank", &self.rank)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<T> MutexGuard<'_, T> {
    /// Waits on `cv`, releasing the lock meanwhile (the thread holds nothing else new).
    pub fn wait(&mut self, cv: &parking_lot::Condvar) {
        cv.wait(&mut self.inner);
    }

    /// [`MutexGuard::wait`] with a timeout; true when it timed out.
    pub fn wait_for(&mut self, cv: &parking_lot::Condvar, timeout: Duration) -> bool {
        cv.wait_for(&mut self.inner, timeout).timed_out()
    }
}

impl<T> Deref for MutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for MutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

/// A reader-writer lock with a place in the lock order.
pub struct RwLock<T> {
    rank: Rank,
    name: &'static str,
    inner: parking_lot::RwLock<T>,
}

/// A read guard of a [`RwLock`].
pub struct ReadGuard<'a, T> {
    inner: parking_lot::RwLockReadGuard<'a, T>,
    _held: Held,
}

/// A write guard of a [`RwLock`].
pub struct WriteGuard<'a, T> {
    inner: parking_lot::RwLockWriteGuard<'a, T>,
    _held: Held,
}

impl<T> RwLock<T> {
    /// A lock of `rank`; `name` appears in violation reports.
    pub const fn new(rank: Rank, name: &'static str, value: T) -> Self {
        RwLock {
            rank,
            name,
            inner: parking_lot::RwLock::new(value),
        }
    }

    /// Shared access, checking the order first (debug builds). Readers count like writers: a
    /// waiting writer blocks new readers, so a read taken out of order can deadlock too.
    pub fn read(&self) -> ReadGuard<'_, T> {
        let held = Held::check(self.rank, self.name);
        let inner = self.inner.read();
        ReadGuard {
            inner,
            _held: held(),
        }
    }

    /// Exclusive access to a lock that no other thread can reach yet (its owner is being built
    /// and not published). Such a lock cannot take part in a deadlock, so it is outside the
    /// order: locks of any rank may be taken while it is held.
    ///
    /// # Panics
    /// If the lock is held: then it is shared after all.
    pub fn write_unpublished(&self) -> parking_lot::RwLockWriteGuard<'_, T> {
        self.inner
            .try_write()
            .expect("write_unpublished on a lock that another thread holds")
    }

    /// Exclusive access, checking the order first (debug builds).
    pub fn write(&self) -> WriteGuard<'_, T> {
        let held = Held::check(self.rank, self.name);
        let inner = self.inner.write();
        WriteGuard {
            inner,
            _held: held(),
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for RwLock<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RwLock")
            .field("rank", &self.rank)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<T> Deref for ReadGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> Deref for WriteGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.inner
    }
}

impl<T> DerefMut for WriteGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.inner
    }
}

#[cfg(all(test, debug_assertions))]
mod tests {
    use super::*;

    #[test]
    fn increasing_ranks_pass_and_a_lower_rank_under_a_higher_one_panics() {
        let outer = Mutex::new(Rank::Writer, "outer", 0);
        let inner = RwLock::new(Rank::Registry, "inner", 0);
        {
            let _a = outer.lock();
            let _b = inner.read();
        }
        let before = violations();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _b = inner.read();
            let _a = outer.lock();
        }));
        let msg = *caught
            .expect_err("out of order")
            .downcast::<String>()
            .unwrap();
        assert!(
            msg.contains("taking outer (Writer) while holding inner (Registry)"),
            "{msg}"
        );
        assert!(violations() > before);
        // The panic released both: the right order works again on this thread.
        let _a = outer.lock();
        let _b = inner.write();
    }

    #[test]
    fn same_rank_twice_is_a_violation_and_try_lock_is_not() {
        let a = Mutex::new(Rank::Writer, "a", ());
        let b = Mutex::new(Rank::Writer, "b", ());
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _a = a.lock();
            let _b = b.lock();
        }));
        assert!(caught.is_err());
        let _b = b.lock();
        assert!(a.try_lock().is_some());
    }
}
