//! Body types shared by the stages: everything is streamed; nothing here buffers.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// The error type every body in the gate carries.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body as the gate sends it to the client.
pub type ResponseBody = UnsyncBoxBody<Bytes, BoxError>;

/// A request body as the gate sends it to the upstream.
pub type RequestBody = UnsyncBoxBody<Bytes, BoxError>;

/// A body that is complete in memory.
pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// An empty body.
pub fn empty() -> ResponseBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body that fails at once: the client sees the connection or stream aborted, never a silently
/// truncated body.
pub fn failed(error: BoxError) -> ResponseBody {
    Failed(Some(error)).boxed_unsync()
}

struct Failed(Option<BoxError>);

impl Body for Failed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Poll::Ready(self.0.take().map(Err))
    }
}

/// Wraps a request body so the sender learns when it has been sent completely: the upstream's
/// response-header timeout starts then, so a slow client is never blamed on the upstream.
pub struct SignalOnEnd<B> {
    inner: B,
    done: Option<tokio::sync::oneshot::Sender<()>>,
}

impl<B: Body> SignalOnEnd<B> {
    /// The wrapped body and a receiver that completes once the body has ended (or been dropped),
    /// or no receiver when the body has already ended: most requests have none, and need no
    /// channel.
    pub fn new(inner: B) -> (Self, Option<tokio::sync::oneshot::Receiver<()>>) {
        if inner.is_end_stream() {
            return (Self { inner, done: None }, None);
        }
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let wrapped = Self {
            inner,
            done: Some(sender),
        };
        (wrapped, Some(receiver))
    }

    fn finish(&mut self) {
        if let Some(done) = self.done.take() {
            let _ = done.send(());
        }
    }
}

impl<B> Body for SignalOnEnd<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body whose next piece did not come within the listener's `request_body_timeout`.
#[derive(Debug, thiserror::Error)]
#[error("the request body stalled: no data for {seconds:.1} s")]
pub struct BodyStalled {
    pub seconds: f64,
}

/// A body that fails with [`BodyStalled`] when its next frame takes longer than `limit`: a
/// client that trickles a body (or stops sending one) would otherwise hold an upstream
/// connection for as long as it likes. The bound is per frame, so a large upload that keeps
/// moving is never cut off. The timer is made when the body first has to wait, so requests
/// without a body (most of them) cost nothing.
pub struct StallTimeout<B> {
    inner: B,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The deadline runs for the current wait (cleared by each frame).
    waiting: bool,
    limit: std::time::Duration,
}

impl<B> StallTimeout<B> {
    pub fn new(inner: B, limit: std::time::Duration) -> Self {
        Self {
            inner,
            deadline: None,
            waiting: false,
            limit,
        }
    }
}

impl<B> Body for StallTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.waiting = false;
                Poll::Ready(frame.map(|frame| frame.map_err(Into::into)))
            }
            Poll::Pending => {
                let limit = this.limit;
                let deadline = this
                    .deadline
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                if !this.waiting {
                    // A new wait: the timer (made once per body) starts again.
                    this.waiting = true;
                    deadline.as_mut().reset(tokio::time::Instant::now() + limit);
                }
                match deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled {
                        seconds: limit.as_secs_f64(),
                    })))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Data already read from a body, followed by the rest of it: used when a response was read
/// ahead (to inspect it) but turned out too large to hold, so it streams on untouched.
pub struct Prefixed<B> {
    prefix: Option<Bytes>,
    rest: B,
}

impl<B> Prefixed<B> {
    pub fn new(prefix: Bytes, rest: B) -> Self {
        Self {
            prefix: (!prefix.is_empty()).then_some(prefix),
            rest,
        }
    }
}

impl<B> Body for Prefixed<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        Pin::new(&mut self.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        let extra = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        hint.set_lower(hint.lower() + extra);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + extra);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn prefixed_body_yields_prefix_then_rest() {
        let body = Prefixed::new(
            Bytes::from_static(b"hello "),
            Full::new(Bytes::from_static(b"world")),
        );
        let collected = body.collect().await.unwrap().to_bytes();
        assert_eq!(&collected[..], b"hello world");
    }

    #[test]
    fn a_body_that_has_ended_needs_no_signal() {
        let (body, sent) = SignalOnEnd::new(Empty::<Bytes>::new());
        assert!(sent.is_none(), "no channel for a request without a body");
        assert!(body.is_end_stream());
    }

    #[tokio::test]
    async fn the_signal_comes_with_the_end_of_the_body_not_before() {
        let frames = vec![
            Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"part 1"))),
            Ok(Frame::data(Bytes::from_static(b"part 2"))),
        ];
        let streamed = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let (mut body, sent) = SignalOnEnd::new(streamed);
        let mut sent = sent.expect("a streamed body is signalled");
        assert!(body.frame().await.is_some());
        assert!(sent.try_recv().is_err(), "one frame is not the whole body");
        assert!(body.frame().await.is_some());
        assert!(body.frame().await.is_none());
        assert!(sent.try_recv().is_ok(), "the end of the body is signalled");
    }
}
