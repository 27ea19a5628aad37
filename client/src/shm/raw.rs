//! The only `unsafe` code of shoal: mapping the shared-memory segment, viewing
//! it as atomic words, and taking ownership of a descriptor received over the
//! socket. Each block states why it is sound; everything that can be checked
//! (sizes, alignment, seals) is checked before it runs.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU64;

use memmap2::{MmapOptions, MmapRaw};
use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags};

use super::{ShmError, HEADER_WORDS};

/// A mapped segment and the descriptor it came from.
#[derive(Debug)]
pub(super) struct Mapping {
    map: MmapRaw,
    fd: OwnedFd,
    words: usize,
}

impl Mapping {
    /// The daemon's segment: a memfd of `len` bytes, mapped read-write, then
    /// sealed so it can never shrink or grow and no one can map it writable
    /// again (our own mapping keeps working).
    pub(super) fn create(len: usize) -> Result<Mapping, ShmError> {
        let fd = memfd_create(
            c"shoal-l1",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )
        .map_err(io::Error::from)?;
        let off = i64::try_from(len).map_err(|_| ShmError::Invalid("segment too large".into()))?;
        nix::unistd::ftruncate(&fd, off).map_err(io::Error::from)?;
        let map = MmapOptions::new().len(len).map_raw(&fd)?;
        let mut seals = SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW;
        // Linux ≥ 5.1; the read-only descriptor handed out (`share`) covers
        // older kernels.
        if fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(seals | SealFlag::F_SEAL_FUTURE_WRITE),
        )
        .is_ok()
        {
            seals |= SealFlag::F_SEAL_FUTURE_WRITE;
        }
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals | SealFlag::F_SEAL_SEAL))
            .map_err(io::Error::from)?;
        Ok(Mapping {
            map,
            fd,
            words: len / 8,
        })
    }

    /// A reader's segment: `fd` must be sealed against shrinking (so the pages
    /// under the mapping never go away, which would raise SIGBUS), and holds at
    /// least a header. Mapped read-only, whole.
    pub(super) fn open(fd: OwnedFd) -> Result<Mapping, ShmError> {
        let seals = fcntl(&fd, FcntlArg::F_GET_SEALS).map_err(io::Error::from)?;
        if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
            return Err(ShmError::Invalid(
                "the segment is not sealed against shrinking".into(),
            ));
        }
        let size = nix::sys::stat::fstat(&fd).map_err(io::Error::from)?.st_size;
        let len = usize::try_from(size).unwrap_or(0) / 8 * 8;
        if len < HEADER_WORDS * 8 {
            return Err(ShmError::Invalid(format!(
                "a segment of {size} bytes has no room for its header"
            )));
        }
        let map = MmapOptions::new().len(len).map_raw_read_only(&fd)?;
        Ok(Mapping {
            map,
            fd,
            words: len / 8,
        })
    }

    /// The segment as words.
    pub(super) fn words(&self) -> &[AtomicU64] {
        // SAFETY: the mapping is `self.words * 8` bytes long (we asked for that
        // length, a multiple of 8, and memmap2 maps it whole or fails) and page
        // aligned, so it holds `self.words` properly aligned `AtomicU64`s, which
        // have the size and alignment of `u64`. It lives as long as `self.map`,
        // which the returned borrow cannot outlive, and the file under it cannot
        // shrink (sealed: checked in `open`, done in `create`), so every page
        // stays backed. Other processes change the memory concurrently; that is
        // what atomics are for: we only ever access it through them (relaxed,
        // acquire and release loads and stores, `fetch_*` only on the writer's
        // read-write mapping). Atomic loads from read-only memory are allowed for
        // lock-free atomics of this size (std::sync::atomic, "Atomic accesses to
        // read-only memory"). No `&[u8]` or `&mut` to the memory is ever made.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().cast::<AtomicU64>(), self.words) }
    }

    /// A descriptor of the segment for a reader: opened read-only through
    /// /proc when possible (so it cannot be mapped writable on any kernel),
    /// else a duplicate (the seals forbid writing through it).
    pub(super) fn share(&self) -> io::Result<OwnedFd> {
        let path = format!("/proc/self/fd/{}", self.fd.as_raw_fd());
        match std::fs::File::open(path) {
            Ok(f) => Ok(OwnedFd::from(f)),
            Err(_) => self.fd.try_clone(),
        }
    }
}

/// Sends `data` with `fd` attached (SCM_RIGHTS) on the Unix socket `sock`.
/// Returns the bytes sent (at least one when it succeeds; the rest, if any, is
/// the caller's to send).
pub fn send_with_fd(sock: RawFd, data: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    let fds = [fd.as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&fds)];
    sendmsg::<()>(
        sock,
        &[io::IoSlice::new(data)],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)
}

/// Receives bytes into `buf` and the first descriptor attached to them, if any
/// (any further descriptors are closed). Non-blocking.
pub(super) fn recv_with_fd(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!([RawFd; 2]);
    let msg = recvmsg::<()>(
        sock.as_fd().as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
    )
    .map_err(io::Error::from)?;
    let n = msg.bytes;
    let mut first = None;
    for c in msg.cmsgs().map_err(io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for raw in fds {
                // SAFETY: SCM_RIGHTS installed `raw` in this process for us
                // alone: nobody else knows the number, so it is open and owned
                // by no one until wrapped here, exactly once.
                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                if first.is_none() {
                    first = Some(owned);
                }
            }
        }
    }
    Ok((n, first))
}
