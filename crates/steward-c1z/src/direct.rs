//! Large sequential writes that bypass the page cache where the system allows it (Linux `O_DIRECT`).
//!
//! The grant index pages `btree` appends to the working database (2.5 GB at 10 M grants) are written
//! once and read back once, by the compression in `finish`. Written through the page cache, every one of
//! those pages first has to be allocated and filled by the kernel: on our 2-core VM that was 36 % of the
//! samples of the index build (docs/benchmarks.md). [`SeqWriter`] collects the bytes in an aligned buffer
//! of [`CHUNK`] bytes and writes it with one direct `pwrite`; where direct I/O is not available (another
//! OS, a filesystem such as tmpfs that refuses it, an unaligned start) it writes through the page cache
//! as before. The bytes on disk are the same either way; reads stay coherent (the kernel flushes or
//! bypasses cached pages of a range it writes directly).
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
pub(crate) const CHUNK: usize = 4 << 20;

/// Appends bytes to a file from a starting offset, directly when it can (see the module docs).
pub(crate) struct SeqWriter {
    path: PathBuf,
    mode: Mode,
    /// File offset of the first byte not written yet.
    pos: u64,
}

enum Mode {
    Direct {
        file: File,
        /// `CHUNK + ALIGN` bytes; the chunk starts at `start`, the first aligned address in it.
        buf: Vec<u8>,
        start: usize,
        len: usize,
    },
    Buffered(std::io::BufWriter<File>),
}

impl SeqWriter {
    /// A writer of `path` from offset `pos`, which must be the file's end or within it. Direct when
    /// `direct` is asked for, `pos` is aligned and the file opens that way.
    pub(crate) fn new(path: &Path, pos: u64, direct: bool) -> Result<Self> {
        let mode = match direct_file(path).filter(|_| direct && pos.is_multiple_of(ALIGN as u64)) {
            Some(file) => {
                let buf = vec![0u8; CHUNK + ALIGN];
                let start = (ALIGN - buf.as_ptr() as usize % ALIGN) % ALIGN;
                Mode::Direct {
                    file,
                    buf,
                    start,
                    len: 0,
                }
            }
            None => Mode::Buffered(std::io::BufWriter::with_capacity(
                1 << 20,
                buffered_file(path, pos)?,
            )),
        };
        Ok(Self {
            path: path.to_owned(),
            mode,
            pos,
        })
    }

    /// Whether the writes bypass the page cache (until a refusal makes them go through it).
    pub(crate) fn is_direct(&self) -> bool {
        matches!(self.mode, Mode::Direct { .. })
    }

    pub(crate) fn write_all(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            match &mut self.mode {
                Mode::Buffered(w) => {
                    w.write_all(bytes)
                        .map_err(C1zError::io("write index pages to", &self.path))?;
                    self.pos += bytes.len() as u64;
                    return Ok(());
                }
                Mode::Direct { buf, start, len, .. } => {
                    let n = bytes.len().min(CHUNK - *len);
                    buf[*start + *len..*start + *len + n].copy_from_slice(&bytes[..n]);
                    *len += n;
                    bytes = &bytes[n..];
                    if *len == CHUNK {
                        self.write_chunk()?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Writes out what is collected (a last direct write of an unaligned length goes through the page
    /// cache) and flushes.
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.write_chunk()?;
        if let Mode::Buffered(w) = &mut self.mode {
            w.flush()
                .map_err(C1zError::io("write index pages to", &self.path))?;
        }
        Ok(())
    }

    /// Writes the collected chunk at `pos`: directly if its length allows, else (or when the system
    /// refuses) through the page cache, which it then keeps using.
    fn write_chunk(&mut self) -> Result<()> {
        let Mode::Direct {
            file,
            buf,
            start,
            len,
        } = &mut self.mode
        else {
            return Ok(());
        };
        if *len == 0 {
            return Ok(());
        }
        let chunk = &buf[*start..*start + *len];
        if len.is_multiple_of(ALIGN) && write_at(file, chunk, self.pos).is_ok() {
            self.pos += *len as u64;
            *len = 0;
            return Ok(());
        }
        // Refused (or not aligned): the same bytes through the page cache, and from now on.
        let pending = chunk.to_vec();
        let mut w = std::io::BufWriter::with_capacity(1 << 20, buffered_file(&self.path, self.pos)?);
        w.write_all(&pending)
            .map_err(C1zError::io("write index pages to", &self.path))?;
        self.pos += pending.len() as u64;
        self.mode = Mode::Buffered(w);
        Ok(())
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
    // A thread reads the next chunk while this one hands the last to `out` (the disk and the compressor
    // work at the same time); two buffers go back and forth.
    std::thread::scope(|scope| {
        let (full_tx, full) = std::sync::mpsc::sync_channel::<(Vec<u8>, usize, usize)>(1);
        let (free_tx, free) = std::sync::mpsc::channel::<Vec<u8>>();
        for _ in 0..2 {
            let _ = free_tx.send(vec![0u8; CHUNK + ALIGN]);
        }
        let reader = scope.spawn(move || -> Option<u64> {
            // The offset it stopped at when the system refused a direct read.
            let mut at = pos;
            for mut buf in free {
                if at >= end {
                    return None;
                }
                let start = (ALIGN - buf.as_ptr() as usize % ALIGN) % ALIGN;
                let want = ((end - at) as usize).min(CHUNK);
                // Direct reads need an aligned length: round up (a read past the file's end stops there).
                let asked = want.div_ceil(ALIGN) * ALIGN;
                let n = match read_at(&file, &mut buf[start..start + asked], at) {
                    Ok(n) => n.min(want),
                    Err(_) => return Some(at),
                };
                if n == 0 || full_tx.send((buf, start, n)).is_err() {
                    return None;
                }
                at += n as u64;
            }
            None
        });
        let mut copied = 0;
        for (buf, start, n) in full {
            out.write_all(&buf[start..start + n])
                .map_err(C1zError::io("compress", path))?;
            copied += n as u64;
            let _ = free_tx.send(buf);
        }
        drop(free_tx);
        match reader.join() {
            // Refused at `at`: the rest through the page cache.
            Ok(Some(at)) => Ok(copied + copy_range_buffered(path, (at, end), out)?),
            Ok(None) => Ok(copied),
            Err(_) => Err(C1zError::State("the thread reading the working database stopped")),
        }
    })
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

fn buffered_file(path: &Path, pos: u64) -> Result<File> {
    use std::io::Seek;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(C1zError::io("open", path))?;
    f.seek(std::io::SeekFrom::Start(pos))
        .map_err(C1zError::io("seek in", path))?;
    Ok(f)
}

#[cfg(target_os = "linux")]
fn direct_file(path: &Path) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
        .open(path)
        .ok()
}

#[cfg(not(target_os = "linux"))]
fn direct_file(_path: &Path) -> Option<File> {
    None
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
fn read_at(f: &File, buf: &mut [u8], pos: u64) -> std::io::Result<usize> {
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
fn read_at(_f: &File, _buf: &mut [u8], _pos: u64) -> std::io::Result<usize> {
    Err(std::io::Error::other("positioned reads are not available"))
}

#[cfg(unix)]
fn write_at(f: &File, bytes: &[u8], pos: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::write_all_at(f, bytes, pos)
}

#[cfg(not(unix))]
fn write_at(_f: &File, _bytes: &[u8], _pos: u64) -> std::io::Result<()> {
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
            let mut w = SeqWriter::new(&p, start as u64, direct).unwrap();
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
