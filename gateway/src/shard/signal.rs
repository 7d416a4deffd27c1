//! Single-threaded wake-ups between the tasks of one shard: a one-shot [`Signal`], a
//! [`Wakeup`] for the one router loop, and a [`Notify`] for many waiting connections.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::task::{Poll, Waker};

/// A one-shot, single-threaded event that any number of tasks can wait for.
#[derive(Debug, Default)]
pub struct Signal {
    fired: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Signal {
    pub fn fire(&self) {
        self.fired.set(true);
        for waker in self.waiters.take() {
            waker.wake();
        }
    }

    pub fn fired(&self) -> bool {
        self.fired.get()
    }

    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.fired.get() {
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

/// Wakes one task (the router loop) from tasks of the same thread.
#[derive(Debug, Default)]
pub struct Wakeup {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Wakeup {
    pub fn wake(&self) {
        self.set.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Completes once `wake` was called since the last completion.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        std::future::poll_fn(move |cx| {
            if self.set.replace(false) {
                return Poll::Ready(());
            }
            *self.waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
    }
}

/// Tasks of one thread waiting for the same event, each woken once per `notify_all`.
#[derive(Debug, Default)]
pub struct Notify {
    generation: Cell<u64>,
    waiters: RefCell<Vec<Waker>>,
}

impl Notify {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get().wrapping_add(1));
        for waker in self.waiters.take() {
            waker.wake();
        }
    }

    /// Completes at the next `notify_all`.
    pub fn wait(&self) -> impl Future<Output = ()> + '_ {
        let start = self.generation.get();
        std::future::poll_fn(move |cx| {
            if self.generation.get() != start {
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
    fn signal_wakes_every_waiter() {
        let signal = Signal::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
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
    fn notify_wakes_every_waiter_once() {
        use std::future::Future as _;
        let notify = Notify::default();
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = Box::pin(notify.wait());
        assert_eq!(first.as_mut().poll(&mut cx), Poll::Pending);
        notify.notify_all();
        assert_eq!(first.as_mut().poll(&mut cx), Poll::Ready(()));
        let mut second = Box::pin(notify.wait());
        assert_eq!(second.as_mut().poll(&mut cx), Poll::Pending);
        let wakeup = Wakeup::default();
        let mut woken = Box::pin(wakeup.wait());
        assert_eq!(woken.as_mut().poll(&mut cx), Poll::Pending);
        wakeup.wake();
        assert_eq!(woken.as_mut().poll(&mut cx), Poll::Ready(()));
    }
}
