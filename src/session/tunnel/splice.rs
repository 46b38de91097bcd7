//! Tunnel mode, underneath: payloads moved with `splice(2)`.
//!
//! When both legs of a tunnel are plain TCP sockets, the payload of a large data frame goes
//! from one socket to the other through a pipe, without being copied into the proxy (on Linux,
//! with the `splice` feature). Measured on loopback with 256 KiB messages: ~0.3 ms of proxy CPU
//! per MB instead of ~1.2 ms for read/write through a buffer. Frame headers are still read,
//! so the tunnel keeps its frame boundaries, counts and close codes.
//!
//! A leg ([`Transport`](crate::transport::Transport)) is a plain socket when hyper hands over a `TokioIo<TcpStream>`: the upstream leg of a
//! `ws://` member always, the client leg when the server runs hyper's HTTP/1 connection
//! directly on the socket (as `axum_ws_proxy::serve`, and so `ws-proxy`, does). Behind TLS, HTTP/2, or
//! a server that wraps the socket (hyper-util's `auto` builder, hence `axum::serve`), bytes go
//! through a buffer as before.
//!
//! Each direction that splices gets its own pipe (two file descriptors, 64 KiB of kernel
//! buffer) when its first large payload arrives, and gives it back when frames turn small
//! again: while the destination is full, bytes wait in the pipe instead of a buffer. Idle and
//! small-message sessions never have one.

/// What one splice step did.
#[cfg_attr(
    not(all(target_os = "linux", feature = "splice")),
    allow(dead_code, reason = "only `Unavailable` without splice(2)")
)]
pub(crate) enum Spliced {
    /// Waiting on the source (nothing to read) or on the destination (the pipe still holds
    /// bytes for it); the waker is registered.
    Pending,
    /// The source reached its end.
    Eof,
    /// Reading the source failed.
    SourceLost,
    /// Writing the destination failed.
    DestinationLost,
    /// Bytes taken from the source (some may still wait in the pipe).
    Moved(usize),
    /// No pipe (or only a tiny one) could be made: use the buffered path.
    Unavailable,
}

#[cfg(all(target_os = "linux", feature = "splice"))]
mod imp {
    use std::io;
    use std::os::fd::OwnedFd;
    use std::task::{Context, Poll};

    use rustix::pipe::{self, PipeFlags, SpliceFlags};
    use tokio::io::Interest;
    use tokio::net::TcpStream;

    use super::Spliced;

    /// Asked of the kernel for each pipe.
    const PIPE_SIZE: usize = 1 << 20;
    /// Below this a pipe is not worth it (see `SplicePipe::new`).
    const MIN_PIPE_SIZE: usize = 64 << 10;

    const FLAGS: SpliceFlags = SpliceFlags::NONBLOCK.union(SpliceFlags::MOVE);

    /// One direction's pipe, made when its first large payload is spliced. Bytes wait in it
    /// while the destination is full, as they would wait in a buffer.
    #[derive(Debug)]
    pub(crate) struct SplicePipe {
        read: OwnedFd,
        write: OwnedFd,
        size: usize,
        /// Bytes in the pipe, not yet taken by the destination.
        queued: usize,
    }

    impl SplicePipe {
        fn new() -> Option<Self> {
            let (read, write) = pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK).ok()?;
            // Larger than the default 64 KiB: fewer calls per message. The kernel may refuse
            // (`pipe-max-size`, per-user pipe limits); the default then serves.
            let size = pipe::fcntl_setpipe_size(&write, PIPE_SIZE)
                .or_else(|_| pipe::fcntl_getpipe_size(&write))
                .ok()?;
            if size < MIN_PIPE_SIZE {
                // Past the per-user pipe limit the kernel hands out one-page pipes: a splice
                // per 4 KiB would cost more than the copy it saves.
                return None;
            }
            Some(Self {
                read,
                write,
                size,
                queued: 0,
            })
        }

        pub(crate) fn is_empty(&self) -> bool {
            self.queued == 0
        }

        /// Writes what waits in the pipe to `dst`; `Ready(Ok)` once the pipe is empty.
        pub(crate) fn poll_flush(
            &mut self,
            cx: &mut Context<'_>,
            dst: &TcpStream,
        ) -> Poll<io::Result<()>> {
            while self.queued > 0 {
                if dst.poll_write_ready(cx)?.is_pending() {
                    return Poll::Pending;
                }
                let written = dst.try_io(Interest::WRITABLE, || {
                    pipe::splice(&self.read, None, dst, None, self.queued, FLAGS)
                        .map_err(io::Error::from)
                });
                match written {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => self.queued -= n,
                    // Readiness was stale; `poll_write_ready` registers the waker.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    /// Moves up to `len` bytes from `src` into `pipe` (made on first use) and on to `dst`.
    /// The pipe must be empty.
    pub(crate) fn step(
        cx: &mut Context<'_>,
        src: &TcpStream,
        dst: &TcpStream,
        len: usize,
        pipe: &mut Option<SplicePipe>,
    ) -> Spliced {
        if pipe.is_none() {
            *pipe = SplicePipe::new();
        }
        let Some(p) = pipe.as_mut() else {
            return Spliced::Unavailable;
        };
        debug_assert!(p.is_empty());
        let n = loop {
            match src.poll_read_ready(cx) {
                Poll::Pending => return Spliced::Pending,
                Poll::Ready(Err(_)) => return Spliced::SourceLost,
                Poll::Ready(Ok(())) => {}
            }
            let read = src.try_io(Interest::READABLE, || {
                pipe::splice(src, None, &p.write, None, len.min(p.size), FLAGS)
                    .map_err(io::Error::from)
            });
            match read {
                Ok(0) => return Spliced::Eof,
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Spliced::SourceLost,
            }
        };
        p.queued = n;
        match p.poll_flush(cx, dst) {
            Poll::Ready(Err(_)) => Spliced::DestinationLost,
            // Pending: the rest waits in the pipe; the caller flushes it before anything else.
            Poll::Ready(Ok(())) | Poll::Pending => Spliced::Moved(n),
        }
    }
}

#[cfg(not(all(target_os = "linux", feature = "splice")))]
mod imp {
    use std::io;
    use std::task::{Context, Poll};

    use tokio::net::TcpStream;

    use super::Spliced;

    /// Never made where `splice(2)` is not available.
    #[derive(Debug)]
    pub(crate) enum SplicePipe {}

    impl SplicePipe {
        pub(crate) fn is_empty(&self) -> bool {
            match *self {}
        }

        pub(crate) fn poll_flush(
            &mut self,
            _: &mut Context<'_>,
            _: &TcpStream,
        ) -> Poll<io::Result<()>> {
            match *self {}
        }
    }

    pub(crate) fn step(
        _: &mut Context<'_>,
        _: &TcpStream,
        _: &TcpStream,
        _: usize,
        _: &mut Option<SplicePipe>,
    ) -> Spliced {
        Spliced::Unavailable
    }
}

pub(crate) use imp::{step, SplicePipe};
