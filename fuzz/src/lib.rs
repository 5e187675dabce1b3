//! What the fuzz targets share: a runtime with paused time, a reader
//! that hands its bytes over in fragments the fuzzer chose, and the
//! process-wide metrics the code under test counts into.
//!
//! Inputs of the byte-stream targets start with a small head (see
//! [`Head`]) that says how the rest is cut into reads; the seed corpora
//! in `fuzz/seeds/` carry it too (written by `examples/seeds.rs`).

use std::{
    collections::VecDeque,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::OnceLock,
    task::{Context, Poll},
};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A current-thread runtime whose clock is paused: timers fire as soon
/// as everything else waits, so timeouts cost nothing and runs are
/// deterministic.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .start_paused(true)
        .build()
        .unwrap_or_else(|e| panic!("cannot build a runtime: {e}"))
}

/// Whether `LINNET_FUZZ_DEBUG` is set: targets then print what they saw,
/// to understand one input (`target <file>` runs just it).
pub fn debug() -> bool {
    static DEBUG: OnceLock<bool> = OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("LINNET_FUZZ_DEBUG").is_some())
}

/// Runs `f` on this thread's runtime (paused time), kept from one input
/// to the next. For targets that spawn no tasks: a task left behind
/// would outlive its input.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    thread_local! {
        static RT: tokio::runtime::Runtime = runtime();
    }
    RT.with(|rt| rt.block_on(f))
}

/// The first two bytes of a byte-stream input: option flags for the
/// target, and the seed of how the rest is cut into reads.
#[derive(Clone, Copy, Debug, Default)]
pub struct Head {
    /// Target-specific options.
    pub flags: u8,
    /// Seeds the fragment sizes; 0 hands everything over in one read.
    pub cuts: u8,
}

impl Head {
    /// Splits `input` into its head and the bytes of the stream.
    pub fn split(input: &[u8]) -> (Self, &[u8]) {
        match input {
            [flags, cuts, rest @ ..] => (
                Self {
                    flags: *flags,
                    cuts: *cuts,
                },
                rest,
            ),
            _ => (Self::default(), &[]),
        }
    }

    /// The head's bytes, for writing seeds.
    pub fn bytes(self) -> [u8; 2] {
        [self.flags, self.cuts]
    }

    /// `data` cut into fragments as the head says.
    pub fn fragments(self, data: &[u8]) -> VecDeque<Vec<u8>> {
        if data.is_empty() {
            return VecDeque::new();
        }
        if self.cuts == 0 {
            return VecDeque::from([data.to_vec()]);
        }
        // The low bits bound the fragment size (1..=128 bytes); the rest
        // seed which sizes come, so that one byte reaches both single
        // bytes and a few large reads.
        let max = 1usize << (self.cuts & 0x07);
        let mut state = u32::from(self.cuts) | 0x9e37_7900;
        let mut out = VecDeque::new();
        let mut rest = data;
        while !rest.is_empty() {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            let n = (state as usize % max + 1).min(rest.len());
            out.push_back(rest[..n].to_vec());
            rest = &rest[n..];
        }
        out
    }
}

/// What a [`Fragments`] reader does once its fragments are read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// It reports end of stream.
    Eof,
    /// It never answers again (a silent peer).
    Stall,
}

/// A reader returning one fragment (or what fits of it) per read, then
/// [`End`]. Writes are accepted and dropped.
#[derive(Debug)]
pub struct Fragments {
    fragments: VecDeque<Vec<u8>>,
    end: End,
}

impl Fragments {
    /// A reader of `fragments`, ending with `end`.
    pub fn new(fragments: VecDeque<Vec<u8>>, end: End) -> Self {
        Self { fragments, end }
    }

    /// Everything not yet read.
    pub fn remaining(&self) -> Vec<u8> {
        self.fragments.iter().flatten().copied().collect()
    }
}

impl AsyncRead for Fragments {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // An empty read would say end of stream: skip empty fragments.
        while self.fragments.front().is_some_and(Vec::is_empty) {
            self.fragments.pop_front();
        }
        let Some(mut next) = self.fragments.pop_front() else {
            return match self.end {
                End::Eof => Poll::Ready(Ok(())),
                // Nothing will wake it: only a timer can end the wait.
                End::Stall => Poll::Pending,
            };
        };
        let n = next.len().min(buf.remaining());
        buf.put_slice(&next[..n]);
        if n < next.len() {
            self.fragments.push_front(next.split_off(n));
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Fragments {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Splits `data` into length-prefixed messages: each is a little-endian
/// `u16` length and that many bytes (fewer at the end). How the
/// control-plane target reads a sequence of messages out of one input.
pub fn messages(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while let [a, b, rest @ ..] = data {
        let n = usize::from(u16::from_le_bytes([*a, *b])).min(rest.len());
        out.push(&rest[..n]);
        data = &rest[n..];
    }
    out
}

/// The inverse of [`messages`], for writing seeds.
pub fn frame(msgs: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::new();
    for m in msgs {
        let n = u16::try_from(m.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&n.to_le_bytes());
        out.extend_from_slice(&m[..usize::from(n)]);
    }
    out
}

/// `examples/mesh.yaml`, the mesh file the control-plane targets serve.
pub const EXAMPLE_MESH: &str = include_str!("../../examples/mesh.yaml");

/// A directory to read mesh files from, holding the token file
/// `examples/mesh.yaml` names (`tokens/client`, whose token is
/// `client-token`), so that the example validates.
pub fn mesh_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join("linnet-fuzz-mesh");
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap_or_else(|e| panic!("{}: {e}", tokens.display()));
        std::fs::write(tokens.join("client"), "client-token\n")
            .unwrap_or_else(|e| panic!("{}: {e}", tokens.display()));
        dir
    })
}
