//! Relaying a stream with one write per burst instead of one per upstream frame.
//!
//! The upstream's SSE events reach the proxy as separate body frames even when they arrived together (the
//! HTTP client hands them over one at a time, each after a task switch), and the HTTP server writes and
//! flushes whenever the body has nothing ready — so a 13-event burst cost 13 `writev` calls, and flushing
//! was 43 % of the broker's CPU under streaming load (docs/benchmarks.md finding 14). [`Coalesce`] holds
//! frames that arrive back to back and lets them go as one when the upstream has nothing more *right now*:
//! after [`YIELDS`] scheduler yields with nothing new. Real token streams, whose events are milliseconds
//! apart, still go out event by event, each delayed by those yields (microseconds, no system call).

use bytes::{Bytes, BytesMut};
use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Release what is held once it reaches this size, however fast the upstream keeps sending.
pub const MAX_HELD: usize = 32 * 1024;
/// Yields with frames held and nothing new before they go. Measured on tokio's multi-thread runtime: the
/// task re-polled after waking itself runs again *before* the HTTP client's connection task has handed
/// over the next frame; after the second yield the next frame of a burst is always there.
pub const YIELDS: u8 = 2;

pub struct Coalesce<S> {
    inner: S,
    held: Vec<Bytes>,
    held_len: usize,
    /// How many times in a row we returned `Pending` with frames held (waking ourselves) and found
    /// nothing new.
    yields: u8,
    /// The end of `inner` (None, or its error), met while frames were held: returned after them.
    end: Option<Option<std::io::Error>>,
    done: bool,
}

impl<S> Coalesce<S> {
    pub fn new(inner: S) -> Self {
        Coalesce {
            inner,
            held: Vec::new(),
            held_len: 0,
            yields: 0,
            end: None,
            done: false,
        }
    }

    fn release(&mut self) -> Bytes {
        self.yields = 0;
        self.held_len = 0;
        if self.held.len() == 1 {
            return self.held.pop().unwrap_or_default();
        }
        let mut out = BytesMut::with_capacity(self.held.iter().map(Bytes::len).sum());
        for b in self.held.drain(..) {
            out.extend_from_slice(&b);
        }
        out.freeze()
    }
}

impl<S> Stream for Coalesce<S>
where
    S: Stream<Item = Result<Bytes, std::io::Error>> + Unpin,
{
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Some(end) = this.end.take() {
            this.done = true;
            return Poll::Ready(end.map(Err));
        }
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            match Pin::new(&mut this.inner).poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.yields = 0;
                    if chunk.is_empty() {
                        continue;
                    }
                    this.held_len += chunk.len();
                    this.held.push(chunk);
                    if this.held_len >= MAX_HELD {
                        return Poll::Ready(Some(Ok(this.release())));
                    }
                }
                Poll::Ready(end) => {
                    let err = end.and_then(Result::err);
                    if this.held.is_empty() {
                        this.done = true;
                        return Poll::Ready(err.map(Err));
                    }
                    this.end = Some(err);
                    return Poll::Ready(Some(Ok(this.release())));
                }
                Poll::Pending if this.held.is_empty() => return Poll::Pending,
                Poll::Pending if this.yields < YIELDS => {
                    // Let the task that feeds `inner` run: what it has ready joins this write.
                    this.yields += 1;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Pending => return Poll::Ready(Some(Ok(this.release()))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::channel::mpsc;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Wake, Waker};

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    type Item = Result<Bytes, std::io::Error>;

    fn setup() -> (
        mpsc::UnboundedSender<Item>,
        Coalesce<mpsc::UnboundedReceiver<Item>>,
        Arc<Count>,
        Waker,
    ) {
        let (tx, rx) = mpsc::unbounded();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        (tx, Coalesce::new(rx), count, waker)
    }

    fn poll(c: &mut Coalesce<mpsc::UnboundedReceiver<Item>>, w: &Waker) -> Poll<Option<Item>> {
        Pin::new(c).poll_next(&mut Context::from_waker(w))
    }

    fn data(p: Poll<Option<Item>>) -> Bytes {
        match p {
            Poll::Ready(Some(Ok(b))) => b,
            other => panic!("expected data, got {other:?}"),
        }
    }

    #[test]
    fn frames_ready_together_go_out_as_one_after_the_yields() {
        let (tx, mut c, count, w) = setup();
        for e in ["data: 1\n\n", "data: 2\n\n", "data: 3\n\n"] {
            tx.unbounded_send(Ok(Bytes::from(e))).expect("send");
        }
        // All three are taken, then the stream yields (waking itself) instead of releasing.
        assert!(poll(&mut c, &w).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), 1, "it must wake itself");
        // A frame that arrives during the yields joins the same write (and starts the count again).
        tx.unbounded_send(Ok(Bytes::from("data: 4\n\n")))
            .expect("send");
        let before = count.0.load(Ordering::SeqCst);
        for _ in 0..YIELDS {
            assert!(poll(&mut c, &w).is_pending());
        }
        assert_eq!(
            count.0.load(Ordering::SeqCst) - before,
            usize::from(YIELDS),
            "one self-wake per yield"
        );
        // Nothing new after the yields: everything goes, in order, as one chunk.
        assert_eq!(
            data(poll(&mut c, &w)),
            "data: 1\n\ndata: 2\n\ndata: 3\n\ndata: 4\n\n"
        );
        // Then an idle upstream is plain Pending, with no self-wake.
        let before = count.0.load(Ordering::SeqCst);
        assert!(poll(&mut c, &w).is_pending());
        assert_eq!(count.0.load(Ordering::SeqCst), before);
        drop(tx);
        assert!(matches!(poll(&mut c, &w), Poll::Ready(None)));
        assert!(matches!(poll(&mut c, &w), Poll::Ready(None)));
    }

    #[test]
    fn the_end_and_an_error_come_after_the_held_frames() {
        let (tx, mut c, _, w) = setup();
        tx.unbounded_send(Ok(Bytes::from("a"))).expect("send");
        tx.unbounded_send(Ok(Bytes::from("b"))).expect("send");
        tx.unbounded_send(Err(std::io::Error::other("broke")))
            .expect("send");
        assert_eq!(data(poll(&mut c, &w)), "ab");
        match poll(&mut c, &w) {
            Poll::Ready(Some(Err(e))) => assert_eq!(e.to_string(), "broke"),
            other => panic!("expected the error, got {other:?}"),
        }
        assert!(matches!(poll(&mut c, &w), Poll::Ready(None)));

        let (tx, mut c, _, w) = setup();
        tx.unbounded_send(Ok(Bytes::from("last"))).expect("send");
        drop(tx);
        assert_eq!(data(poll(&mut c, &w)), "last");
        assert!(matches!(poll(&mut c, &w), Poll::Ready(None)));
    }

    #[test]
    fn a_fast_upstream_is_released_every_max_held_bytes() {
        let (tx, mut c, _, w) = setup();
        let frame = Bytes::from(vec![b'x'; 1000]);
        for _ in 0..100 {
            tx.unbounded_send(Ok(frame.clone())).expect("send");
        }
        let first = data(poll(&mut c, &w));
        assert_eq!(first.len(), MAX_HELD.div_ceil(1000) * 1000);
        // Every release is capped, and all the bytes come out; a bounded number of polls, so a stream
        // that stopped releasing fails here instead of hanging the test.
        let mut total = first.len();
        for _ in 0..100 {
            match poll(&mut c, &w) {
                Poll::Ready(Some(Ok(b))) => {
                    assert!(
                        b.len() <= MAX_HELD + 1000,
                        "{} bytes in one release",
                        b.len()
                    );
                    total += b.len();
                }
                Poll::Pending => {}
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(total, 100_000);
    }
}
