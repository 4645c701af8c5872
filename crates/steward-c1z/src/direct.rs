//! Large sequential writes that bypass the page cache where the system allows it (Linux `O_DIRECT`).
//!
//! The grant index pages `btree` appends to the working database (2.5 GB at 10 M grants) are written
//! once and read back once, by the compression in `finish`. Written through the page cache, every one of
//! those pages first has to be allocated and filled by the kernel: on our 2-core VM that was 36 % of the
//! samples of the index build (docs/benchmarks.md). [`SeqWriter`] collects the bytes in an aligned buffer
//! of [`CHUNK`] bytes and writes it with one direct `pwrite`; [`copy_range`] reads such a range back the
//! same way, a thread reading one chunk ahead of the caller. Where direct I/O is not available (another
//! OS, a filesystem such as tmpfs that refuses it with `EINVAL`, an unaligned start or tail) they clear
//! `O_DIRECT` and go through the page cache as before; any other error is reported. The bytes on disk
//! are the same either way, and the kernel keeps direct and cached access to a range coherent.
//!
//! Not used for the sort runs of `btree` (1.6 GB at 10 M grants, written and read once too): many runs
//! are merged side by side in 256 KiB reads, and read directly each one waits on the disk — the index
//! build took 8.2–8.7 s instead of 6.3–6.4 s (docs/benchmarks.md).
//!
//! Invariant: direct writes are whole multiples of [`ALIGN`] at offsets that are multiples of it, from a
//! buffer whose address is one too; a write that does not meet that goes through the page cache.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{C1zError, Result};

/// Alignment of direct I/O (offsets, lengths, buffer addresses): 4 KiB suits every Linux block device.
pub(crate) const ALIGN: usize = 4096;

/// Bytes collected before one direct write (a multiple of [`ALIGN`]).
pub(crate) const CHUNK: usize = 1 << 20;

/// Appends bytes to a file from a starting offset, directly when it can (see the module docs): the bytes
/// are collected in an aligned chunk, and a thread of its own writes each full chunk with one positioned
/// write while the next is filled ([`DEPTH`] chunks at most in flight), so that the caller's work and
/// the disk overlap. A failed write is reported by a later call (at the latest [`flush`](Self::flush)).
pub(crate) struct SeqWriter {
    /// For messages.
    path: PathBuf,
    /// `CHUNK + ALIGN` bytes; the chunk starts at `start`, the first aligned address in it.
    buf: Vec<u8>,
    start: usize,
    len: usize,
    /// File offset of the chunk.
    pos: u64,
    /// Chunks handed to the writing thread and not back yet.
    in_flight: usize,
    to_io: Option<std::sync::mpsc::SyncSender<Job>>,
    from_io: std::sync::mpsc::Receiver<std::io::Result<Vec<u8>>>,
    io: Option<std::thread::JoinHandle<()>>,
    /// `O_DIRECT` is (still) set on the file.
    direct: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// Chunks a [`SeqWriter`] may have in flight.
const DEPTH: usize = 2;

/// A chunk to write: the buffer, where the chunk starts in it, its length, the file offset.
type Job = (Vec<u8>, usize, usize, u64);

impl SeqWriter {
    /// A writer of the file at `path` from offset `pos` (its end or within it); direct when
    /// `want_direct`, `pos` is aligned and the system allows it.
    pub(crate) fn open(path: &Path, pos: u64, want_direct: bool) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(C1zError::io("open", path))?;
        let direct = want_direct && pos.is_multiple_of(ALIGN as u64) && set_direct(&file, true).is_ok();
        let direct = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(direct));
        let (to_io, jobs) = std::sync::mpsc::sync_channel::<Job>(DEPTH);
        let (done, from_io) = std::sync::mpsc::channel();
        let flag = direct.clone();
        let io = std::thread::Builder::new()
            .name("c1z-write".into())
            .spawn(move || {
                for (buf, start, len, pos) in jobs {
                    let r = write_chunk(&file, &flag, &buf[start..start + len], pos).map(|()| buf);
                    if done.send(r).is_err() {
                        break;
                    }
                }
            })
            .map_err(C1zError::io("start the thread writing", path))?;
        let buf = vec![0u8; CHUNK + ALIGN];
        Ok(Self {
            path: path.to_owned(),
            start: aligned_start(&buf),
            buf,
            len: 0,
            pos,
            in_flight: 0,
            to_io: Some(to_io),
            from_io,
            io: Some(io),
            direct,
        })
    }

    /// Whether the writes bypass the page cache (until a refusal makes them go through it); final after
    /// [`flush`](Self::flush).
    pub(crate) fn is_direct(&self) -> bool {
        self.direct.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(crate) fn write_all(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(CHUNK - self.len);
            let at = self.start + self.len;
            self.buf[at..at + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == CHUNK {
                self.write_chunk()?;
            }
        }
        Ok(())
    }

    /// The next `len` bytes to write (at most [`CHUNK`]), to be filled in place and then written with
    /// [`advance`](Self::advance); until then, calls return the same bytes (as last left).
    pub(crate) fn slot(&mut self, len: usize) -> Result<&mut [u8]> {
        if len > CHUNK {
            return Err(C1zError::State("a write slot larger than a chunk"));
        }
        if CHUNK - self.len < len {
            self.write_chunk()?;
        }
        let at = self.start + self.len;
        Ok(&mut self.buf[at..at + len])
    }

    /// Counts the `len` bytes of the [`slot`](Self::slot) as written.
    pub(crate) fn advance(&mut self, len: usize) -> Result<()> {
        if self.len + len > CHUNK {
            return Err(C1zError::State("advanced past the write slot"));
        }
        self.len += len;
        if self.len == CHUNK {
            self.write_chunk()?;
        }
        Ok(())
    }

    /// Writes out what is collected (a last chunk of an unaligned length goes through the page cache)
    /// and waits until every chunk is written.
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.write_chunk()?;
        while self.in_flight > 0 {
            self.take_back()?;
        }
        Ok(())
    }

    /// Waits for a chunk in flight to be written; its buffer comes back.
    fn take_back(&mut self) -> Result<Vec<u8>> {
        let back = self
            .from_io
            .recv()
            .map_err(|_| C1zError::State("the thread writing pages stopped"))?;
        self.in_flight -= 1;
        back.map_err(C1zError::io("write pages to", &self.path))
    }

    /// Hands the collected chunk to the writing thread and goes on in another buffer.
    fn write_chunk(&mut self) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        let next = if self.in_flight >= DEPTH {
            self.take_back()?
        } else {
            vec![0u8; CHUNK + ALIGN]
        };
        let full = std::mem::replace(&mut self.buf, next);
        let job = (full, self.start, self.len, self.pos);
        self.start = aligned_start(&self.buf);
        let sent = self.to_io.as_ref().is_some_and(|tx| tx.send(job).is_ok());
        if !sent {
            return Err(C1zError::State("the thread writing pages stopped"));
        }
        self.in_flight += 1;
        self.pos += self.len as u64;
        self.len = 0;
        Ok(())
    }
}

impl Drop for SeqWriter {
    fn drop(&mut self) {
        self.to_io = None;
        if let Some(io) = self.io.take() {
            let _ = io.join();
        }
    }
}

/// Writes `chunk` at `pos` of `file`: directly if it can, else (or when the system refuses) through the
/// page cache, which it then keeps using (`direct` cleared).
fn write_chunk(
    file: &File,
    direct: &std::sync::atomic::AtomicBool,
    chunk: &[u8],
    pos: u64,
) -> std::io::Result<()> {
    use std::sync::atomic::Ordering;
    if direct.load(Ordering::Relaxed) && chunk.len().is_multiple_of(ALIGN) {
        match write_at(file, chunk, pos) {
            Ok(()) => return Ok(()),
            Err(e) if refused(&e) => {}
            Err(e) => return Err(e),
        }
    }
    if direct.load(Ordering::Relaxed) {
        // Refused, or a last unaligned piece: through the page cache from now on.
        direct.store(false, Ordering::Relaxed);
        set_direct(file, false)?;
    }
    write_at(file, chunk, pos)
}

/// Reads exactly `buf.len()` bytes of `f` at `pos` ([`read_at`]; the error names `path`).
pub(crate) fn read_exact_at(f: &File, buf: &mut [u8], pos: u64, path: &Path) -> Result<()> {
    match read_at(f, buf, pos) {
        Ok(n) if n == buf.len() => Ok(()),
        Ok(_) => Err(C1zError::io("read", path)(
            std::io::ErrorKind::UnexpectedEof.into(),
        )),
        Err(e) => Err(C1zError::io("read", path)(e)),
    }
}

/// Reads `range` (byte offsets) of `path` into `out` in [`CHUNK`]s, bypassing the page cache where the
/// system allows it — for bytes [`SeqWriter`] wrote that way, which are not in the cache: read through it,
/// each would be allocated and filled there once more. Falls back to ordinary reads. Returns the bytes
/// copied (fewer than asked at the end of the file).
pub(crate) fn copy_range(path: &Path, range: (u64, u64), out: &mut impl Write) -> Result<u64> {
    let (pos, end) = range;
    let direct = read_direct_file(path).filter(|_| pos.is_multiple_of(ALIGN as u64));
    let Some(file) = direct else {
        return copy_range_buffered(path, range, out);
    };
    // Two threads read the next chunks (alternately: chunk `i` by thread `i % READERS`, two reads in
    // flight, which this disk serves ~15 % faster than one) while this one hands them to `out` in order
    // (the disk and the compressor work at the same time).
    std::thread::scope(|scope| {
        let (full_tx, full) = std::sync::mpsc::sync_channel::<(usize, Got)>(READERS * 2);
        let mut frees = Vec::with_capacity(READERS);
        for r in 0..READERS {
            let (free_tx, free) = std::sync::mpsc::channel::<Vec<u8>>();
            for _ in 0..2 {
                let _ = free_tx.send(vec![0u8; CHUNK + ALIGN]);
            }
            frees.push(free_tx);
            let (full_tx, file) = (full_tx.clone(), &file);
            scope.spawn(move || {
                let mut i = r;
                for mut buf in free {
                    let at = pos + (i * CHUNK) as u64;
                    if at >= end {
                        return;
                    }
                    let start = aligned_start(&buf);
                    let want = ((end - at) as usize).min(CHUNK);
                    // Direct reads need an aligned length: round up (a read past the file's end stops there).
                    let asked = want.div_ceil(ALIGN) * ALIGN;
                    let got = match read_at(file, &mut buf[start..start + asked], at) {
                        Ok(n) => Got::Data(buf, start, n.min(want)),
                        Err(e) if refused(&e) => Got::Refused,
                        Err(e) => Got::Failed(e),
                    };
                    let more = matches!(got, Got::Data(..));
                    if full_tx.send((i, got)).is_err() || !more {
                        return;
                    }
                    i += READERS;
                }
            });
        }
        drop(full_tx);
        // Chunks that came before their turn.
        let mut early: Vec<(usize, Got)> = Vec::new();
        let mut copied = 0u64;
        let mut next = 0usize;
        loop {
            let got = match early.iter().position(|(i, _)| *i == next) {
                Some(k) => early.swap_remove(k).1,
                None => match full.recv() {
                    Ok((i, got)) if i == next => got,
                    Ok(other) => {
                        early.push(other);
                        continue;
                    }
                    // Every reader is done: the range is copied.
                    Err(_) => return Ok(copied),
                },
            };
            match got {
                Got::Data(buf, start, n) => {
                    out.write_all(&buf[start..start + n])
                        .map_err(C1zError::io("compress", path))?;
                    copied += n as u64;
                    if n < CHUNK {
                        // The end of the range, or of the file.
                        return Ok(copied);
                    }
                    let _ = frees[next % READERS].send(buf);
                    next += 1;
                }
                // Refused here: the rest through the page cache.
                Got::Refused => {
                    let at = pos + copied;
                    return Ok(copied + copy_range_buffered(path, (at, end), out)?);
                }
                Got::Failed(e) => return Err(C1zError::io("read", path)(e)),
            }
        }
    })
}

/// Threads [`copy_range`] reads with.
const READERS: usize = 2;

/// A chunk read by a thread of [`copy_range`]: the buffer, where the chunk starts in it and its length; or
/// the system refused the direct read; or the read failed.
enum Got {
    Data(Vec<u8>, usize, usize),
    Refused,
    Failed(std::io::Error),
}

/// Reads `range` of `path` into `out` through the page cache; returns the bytes copied.
pub(crate) fn copy_range_buffered(path: &Path, (pos, end): (u64, u64), out: &mut impl Write) -> Result<u64> {
    use std::io::{Read, Seek};
    let mut f = File::open(path).map_err(C1zError::io("open", path))?;
    f.seek(std::io::SeekFrom::Start(pos))
        .map_err(C1zError::io("seek in", path))?;
    let mut r = std::io::BufReader::with_capacity(1 << 20, f).take(end.saturating_sub(pos));
    std::io::copy(&mut r, out).map_err(C1zError::io("compress", path))
}

/// The offset of the first [`ALIGN`]ed address in `buf` (which has `ALIGN` bytes to spare for it).
fn aligned_start(buf: &[u8]) -> usize {
    (ALIGN - buf.as_ptr() as usize % ALIGN) % ALIGN
}

/// Whether a direct read or write failed because the system refuses direct I/O there (`EINVAL`: a
/// filesystem without it, an alignment it does not accept) rather than for a reason that would fail an
/// ordinary one too (which is then reported, not retried).
#[cfg(target_os = "linux")]
fn refused(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

#[cfg(not(target_os = "linux"))]
fn refused(_e: &std::io::Error) -> bool {
    true
}

/// Sets or clears `O_DIRECT` on an open file (Linux; elsewhere direct I/O is not used).
#[cfg(target_os = "linux")]
fn set_direct(f: &File, on: bool) -> std::io::Result<()> {
    use rustix::fs::OFlags;
    let flags = rustix::fs::fcntl_getfl(f)?;
    let flags = if on {
        flags | OFlags::DIRECT
    } else {
        flags - OFlags::DIRECT
    };
    rustix::fs::fcntl_setfl(f, flags)?;
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_f: &File, _on: bool) -> std::io::Result<()> {
    Err(std::io::Error::other("direct I/O is not used on this system"))
}

#[cfg(target_os = "linux")]
fn read_direct_file(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn read_direct_file(_path: &Path) -> Option<File> {
    None
}

/// One positioned read, retried when interrupted; fewer bytes only at the end of the file.
#[cfg(unix)]
pub(crate) fn read_at(f: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match std::os::unix::fs::FileExt::read_at(f, &mut buf[done..], pos + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(not(unix))]
pub(crate) fn read_at(_f: &File, _buf: &mut [u8], _pos: u64) -> std::io::Result<usize> {
    Err(std::io::Error::other("positioned reads are not available"))
}

/// One positioned write of all of `bytes`.
#[cfg(unix)]
pub(crate) fn write_at(f: &File, bytes: &[u8], pos: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, bytes, pos)
}

#[cfg(not(unix))]
pub(crate) fn write_at(_f: &File, _bytes: &[u8], _pos: u64) -> std::io::Result<()> {
    Err(std::io::Error::other("positioned writes are not available"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Whatever mode the filesystem allows, the file holds exactly the bytes written after `pos`,
    /// across chunk ends and with a last chunk that is not a multiple of the alignment.
    #[test]
    fn writes_land_at_their_offsets_in_either_mode() {
        let dir = tempfile::tempdir().unwrap();
        for (direct, start, sizes) in [
            (true, 2 * ALIGN, vec![CHUNK - 7, 7, CHUNK, 65536 * 3]),
            (true, 2 * ALIGN, vec![100, CHUNK + 100, 3]),
            (true, 100, vec![5000]),
            (false, 2 * ALIGN, vec![CHUNK + 1]),
        ] {
            let p = dir.path().join("f");
            std::fs::write(&p, vec![0xAAu8; start]).unwrap();
            let mut w = SeqWriter::open(&p, start as u64, direct).unwrap();
            if start % ALIGN != 0 || !direct {
                assert!(!w.is_direct());
            }
            let mut want = vec![0xAAu8; start];
            let mut x = 1u8;
            for n in sizes {
                let chunk: Vec<u8> = (0..n)
                    .map(|_| {
                        x = x.wrapping_mul(31).wrapping_add(7);
                        x
                    })
                    .collect();
                w.write_all(&chunk).unwrap();
                want.extend_from_slice(&chunk);
            }
            w.flush().unwrap();
            drop(w);
            assert_eq!(std::fs::read(&p).unwrap(), want);
            // Read back: aligned and unaligned starts, ends inside and past the file.
            let len = want.len() as u64;
            for (a, b) in [
                (0, len),
                (start as u64, len),
                (ALIGN as u64, len + 5 * ALIGN as u64),
                (7, 9000),
                // A whole number of chunks (each reader thread ends on its own).
                (0, 2 * CHUNK as u64),
                (ALIGN as u64, (ALIGN + CHUNK) as u64),
            ] {
                let mut got = Vec::new();
                let n = copy_range(&p, (a, b), &mut got).unwrap();
                let b = b.min(len);
                assert_eq!(n, b - a);
                assert_eq!(got, want[a as usize..b as usize]);
            }
        }
    }
}
