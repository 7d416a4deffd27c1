//! The one wake primitive between the tasks of one shard (one thread): a [`Signal`] that a
//! task can wait on, set in one of three ways, each instance used in one of them:
//! - [`Signal::fire`]: a latch, set for good (shutdown, a drained shard, a stopped loop);
//! - [`Signal::notify_one`]: wakes the one waiter, or, if it is not waiting now, lets its
//!   next wait complete at once (the router loop, woken by whatever its connections queue
//!   while it works);
//! - [`Signal::notify_all`]: wakes every task waiting now and leaves nothing for later
//!   ones (connections waiting for room in the link).
//!
//! No locks and no atomics: a shard's tasks share one thread. Also [`yield_now`], for a task
//! that must let the others that are ready run first.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::task::{Poll, Waker};

/// A single-threaded wake-up that tasks wait for with [`Signal::wait`].
#[derive(Debug, Default)]
pub struct Signal {
    /// Set by `fire`, never cleared: every wait completes.
    fired: Cell<bool>,
    /// Set by `notify_one`, taken by the wait it completes.
    permit: Cell<bool>,
    /// Counts `notify_all`s: a wait completes once it changed since the wait began.
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Signal {
    /// Sets the latch: every wait, now and later, completes.
    pub fn fire(&self) {
        self.fired.set(true);
        self.wake_waiters();
    }

    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    /// Completes one wait: the current one, or the next if none is under way. Meant for a
    /// signal with one waiter; several would be woken and one would complete.
    pub fn notify_one(&self) {
        self.permit.set(true);
        self.wake_waiters();
    }

    /// Completes every wait under way now; later ones wait for the next.
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        self.wake_waiters();
    }

    fn wake_waiters(&self) {
        // Taken out before waking, so that a waker that polls at once cannot find the list
        // borrowed; given back afterwards to keep its allocation.
        let mut waiters = self.waiters.take();
        for waker in waiters.drain(..) {
            waker.wake();
        }
        let mut current = self.waiters.borrow_mut();
        if current.is_empty() {
            *current = waiters;
        }
    }

    /// Completes when the signal has fired, at the next `notify_all`, or with a permit of
    /// `notify_one` (which it takes).
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        let start = self.generation.get();
        std::future::poll_fn(move |cx| {
            if self.fired.get() || self.generation.get() != start || self.permit.replace(false) {
                return Poll::Ready(());
            }
            let mut waiters = self.waiters.borrow_mut();
            if !waiters.iter().any(|waker| waker.will_wake(cx.waker())) {
                waiters.push(cx.waker().clone());
            }
            Poll::Pending
        })
    }
}

/// Lets the other tasks of the thread that are ready run before the caller goes on: it
/// wakes itself and returns `Pending` once, so the runtime queues it behind them.
pub async fn yield_now() {
    let mut yielded = false;
    std::future::poll_fn(move |cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;

    #[test]
    fn a_fired_signal_completes_every_wait() {
        let signal = Signal::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = Box::pin(signal.wait());
        assert_eq!(first.as_mut().poll(&mut cx), Poll::Pending);
        signal.fire();
        assert!(signal.fired());
        assert_eq!(first.as_mut().poll(&mut cx), Poll::Ready(()));
        assert_eq!(
            Box::pin(signal.wait()).as_mut().poll(&mut cx),
            Poll::Ready(())
        );
    }

    #[test]
    fn notify_all_completes_the_waits_under_way_only() {
        let signal = Signal::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = Box::pin(signal.wait());
        assert_eq!(first.as_mut().poll(&mut cx), Poll::Pending);
        signal.notify_all();
        assert_eq!(first.as_mut().poll(&mut cx), Poll::Ready(()));
        let mut second = Box::pin(signal.wait());
        assert_eq!(second.as_mut().poll(&mut cx), Poll::Pending);
    }

    #[test]
    fn notify_one_is_kept_for_the_next_wait() {
        let signal = Signal::default();
        let mut cx = Context::from_waker(Waker::noop());
        signal.notify_one();
        signal.notify_one();
        let mut woken = Box::pin(signal.wait());
        assert_eq!(woken.as_mut().poll(&mut cx), Poll::Ready(()));
        let mut next = Box::pin(signal.wait());
        assert_eq!(
            next.as_mut().poll(&mut cx),
            Poll::Pending,
            "one permit, not two"
        );
        signal.notify_one();
        assert_eq!(next.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn yield_now_is_pending_once() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut yielding = Box::pin(yield_now());
        assert_eq!(yielding.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(yielding.as_mut().poll(&mut cx), Poll::Ready(()));
    }
}
