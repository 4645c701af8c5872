//! The c1z envelope: the 5 magic bytes `C1ZF\0` followed by ONE zstd frame (content checksum on, content
//! size recorded, window ≤ 8 MiB) whose content is a SQLite database file.
//!
//! Writing is atomic: the frame goes to `<out>.tmp`, which is fsynced and renamed over `<out>` (and the
//! directory fsynced), so a crash leaves either the old file or the new one. Reading refuses the newer
//! `C1Z3\0` format, wrong magic, truncation and bad checksums with a [`C1zError`], never a panic, and caps
//! the decompressed size.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::{C1zError, Result};

/// Magic bytes of format v1.
pub const MAGIC_V1: &[u8; 5] = b"C1ZF\0";
/// Magic bytes of the newer Pebble-based format, which we refuse.
pub const MAGIC_V3: &[u8; 5] = b"C1Z3\0";
/// Default cap on the decompressed size (new Baton readers use 10 GiB).
pub const DEFAULT_MAX_DECODED: u64 = 10 << 30;
/// zstd window log: 8 MiB, which every reader accepts.
const WINDOW_LOG: u32 = 23;
/// Decoder window cap (128 MiB), as Baton's readers.
const MAX_WINDOW_LOG: u32 = 27;

/// Compression settings.
#[derive(Debug, Clone, Copy)]
pub struct CompressOptions {
    /// zstd level (1 = fastest). 1 by default: on the large Entra tenant's 4.2 GB database it takes 38 %
    /// less CPU than level 3 and gives a slightly smaller file (189.9 vs 196.9 MB); on the synthetic
    /// `write_grants` shape level 3 is ~14 % smaller.
    pub level: i32,
    /// Worker threads for zstd (0 = single-threaded).
    pub workers: u32,
    /// Bytes of input each worker compresses at a time (0 = zstd's default, 4 windows = 32 MiB at level
    /// 3). Each job holds its input and output in memory, so this bounds the compressor's memory.
    pub job_size: u32,
}

impl Default for CompressOptions {
    fn default() -> Self {
        Self {
            level: 1,
            workers: 2,
            job_size: JOB_SIZE,
        }
    }
}

/// Default [`CompressOptions::job_size`].
pub const JOB_SIZE: u32 = 8 << 20;

/// `<path>.tmp`.
pub fn tmp_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".tmp");
    PathBuf::from(s)
}

/// Compresses the SQLite file `db` into the c1z `out`, atomically.
pub fn write_c1z(db: &Path, out: &Path, opts: CompressOptions) -> Result<u64> {
    write_c1z_reading(db, out, opts, &[])
}

/// [`write_c1z`], reading the byte ranges `direct` of `db` past the page cache where the system allows
/// it (the writer's grant index pages, written that way: see `direct`). Any ranges give the same file.
pub(crate) fn write_c1z_reading(
    db: &Path,
    out: &Path,
    opts: CompressOptions,
    direct: &[(u64, u64)],
) -> Result<u64> {
    write_c1z_with(db, out, opts, direct, None, false)
}

/// [`write_c1z_reading`], taking the grant table's leaves from their compressed pieces when `pieces` are
/// given and still usable (`pieces`; then `db` must be the writer's working database, which it changes);
/// otherwise the whole file is compressed as it is read. With `flush`, the dirty pages of `db` are written
/// back before anything is read past the page cache (each direct read would otherwise wait for those in
/// its range).
pub(crate) fn write_c1z_with(
    db: &Path,
    out: &Path,
    opts: CompressOptions,
    direct: &[(u64, u64)],
    pieces: Option<&crate::pieces::LeafPieces>,
    flush: bool,
) -> Result<u64> {
    let tmp = tmp_path(out);
    let size = std::fs::metadata(db).map_err(C1zError::io("stat", db))?.len();
    let file = File::create(&tmp).map_err(C1zError::io("create", &tmp))?;
    // A failure from here on must not leave a partial `<out>.tmp` (as large as the sync) behind.
    let guard = RemoveOnDrop(Some(tmp.clone()));
    let mut w = BufWriter::with_capacity(1 << 20, file);
    w.write_all(MAGIC_V1).map_err(C1zError::io("write", &tmp))?;
    let from_pieces = match pieces {
        Some(lp) => crate::pieces::write_frame(db, size, &mut w, opts, direct, lp, flush)?.is_some(),
        None => false,
    };
    if !from_pieces {
        if flush {
            let t = std::time::Instant::now();
            File::open(db)
                .and_then(|f| f.sync_data())
                .map_err(C1zError::io("flush", db))?;
            tracing::debug!(
                ms = t.elapsed().as_millis() as u64,
                "c1z: working database flushed"
            );
        }
        let zerr = C1zError::io("compress into", &tmp);
        let mut enc = zstd::stream::write::Encoder::new(&mut w, opts.level)
            .map_err(C1zError::io("compress into", &tmp))?;
        let configure =
            |enc: &mut zstd::stream::write::Encoder<'_, &mut BufWriter<File>>| -> std::io::Result<()> {
                enc.include_checksum(true)?;
                enc.include_contentsize(true)?;
                enc.set_pledged_src_size(Some(size))?;
                enc.window_log(WINDOW_LOG)?;
                if opts.workers > 0 {
                    enc.multithread(opts.workers)?;
                    if opts.job_size > 0 {
                        enc.set_parameter(zstd::stream::raw::CParameter::JobSize(opts.job_size))?;
                    }
                }
                Ok(())
            };
        configure(&mut enc).map_err(zerr)?;
        let at = copy_db(db, (0, size), direct, &mut enc)?;
        if at != size {
            return Err(C1zError::Io {
                action: "read",
                path: db.to_owned(),
                error: std::io::Error::other(format!(
                    "the file ended at byte {at} of {size} while it was compressed"
                )),
            });
        }
        enc.finish().map_err(C1zError::io("finish", &tmp))?;
    }
    let written = commit(w, &tmp, out)?;
    std::mem::forget(guard);
    Ok(written)
}

/// Removes a file when dropped (on an error path).
struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Copies bytes `from..to` of the database `db` to `out`: the parts inside the ranges `direct` past the
/// page cache (from their first aligned byte on), the others through it. Returns the bytes copied (fewer
/// at the end of the file).
pub(crate) fn copy_db(
    db: &Path,
    (from, to): (u64, u64),
    direct: &[(u64, u64)],
    out: &mut impl Write,
) -> Result<u64> {
    let align = crate::direct::ALIGN as u64;
    let mut ranges: Vec<(u64, u64)> = direct
        .iter()
        .map(|&(a, b)| (a.max(from).next_multiple_of(align), b.min(to)))
        .filter(|(a, b)| a < b)
        .collect();
    ranges.sort_unstable();
    let mut at = from;
    for (a, b) in ranges {
        let a = a.max(at);
        if a >= b {
            continue;
        }
        if at < a {
            at += crate::direct::copy_range_buffered(db, (at, a), out)?;
        }
        at += crate::direct::copy_range(db, (a, b), out)?;
    }
    if at < to {
        at += crate::direct::copy_range_buffered(db, (at, to), out)?;
    }
    Ok(at - from)
}

/// Flushes the finished `tmp`, makes it durable and renames it over `out`; returns its size.
fn commit(w: BufWriter<File>, tmp: &Path, out: &Path) -> Result<u64> {
    let file = w.into_inner().map_err(|e| C1zError::Io {
        action: "flush",
        path: tmp.to_owned(),
        error: e.into_error(),
    })?;
    file.sync_all().map_err(C1zError::io("fsync", tmp))?;
    let written = file.metadata().map_err(C1zError::io("stat", tmp))?.len();
    drop(file);
    std::fs::rename(tmp, out).map_err(C1zError::io("rename into place", out))?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        // Make the rename durable; some filesystems do not support fsync on directories, which is harmless.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(written)
}

/// The decompressed database of a c1z, read as a stream (see [`decoder`]).
pub type Decoder = zstd::stream::read::Decoder<'static, BufReader<File>>;

/// Checks the magic bytes of `path` and returns a reader of its decompressed SQLite database, for a caller
/// that reads the pages as they come instead of unpacking them into a file ([`read_c1z`]). The frame's
/// checksum is checked when the reader reaches its end; a truncated or corrupt frame is a read error.
/// The caller caps how much it reads.
pub fn decoder(path: &Path) -> Result<Decoder> {
    let file = File::open(path).map_err(C1zError::io("open", path))?;
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = Vec::with_capacity(5);
    (&mut r)
        .take(5)
        .read_to_end(&mut magic)
        .map_err(C1zError::io("read", path))?;
    if magic.as_slice() == MAGIC_V3 {
        return Err(C1zError::C1z3 {
            path: path.to_owned(),
        });
    }
    if magic.len() < 5 && MAGIC_V1.starts_with(&magic) && !magic.is_empty() {
        return Err(C1zError::Corrupt {
            path: path.to_owned(),
            detail: "the file ends inside its 5-byte header".into(),
        });
    }
    if magic.as_slice() != MAGIC_V1 {
        return Err(C1zError::NotC1z {
            path: path.to_owned(),
            found: magic,
        });
    }
    let corrupt = |e: std::io::Error| C1zError::Corrupt {
        path: path.to_owned(),
        detail: format!("zstd: {e}"),
    };
    let mut dec = zstd::stream::read::Decoder::with_buffer(r)
        .map_err(corrupt)?
        .single_frame();
    dec.window_log_max(MAX_WINDOW_LOG).map_err(corrupt)?;
    Ok(dec)
}

/// Checks the magic bytes of `path` and decompresses its database into `db`.
pub fn read_c1z(path: &Path, db: &Path, max_decoded: u64) -> Result<u64> {
    let corrupt = |e: std::io::Error| C1zError::Corrupt {
        path: path.to_owned(),
        detail: format!("zstd: {e}"),
    };
    let mut dec = decoder(path)?;
    let out = File::create(db).map_err(C1zError::io("create", db))?;
    let mut w = BufWriter::with_capacity(1 << 20, out);
    let n = std::io::copy(&mut (&mut dec).take(max_decoded + 1), &mut w).map_err(corrupt)?;
    if n > max_decoded {
        return Err(C1zError::TooLarge {
            path: path.to_owned(),
            limit: max_decoded,
        });
    }
    if n == 0 {
        return Err(C1zError::Corrupt {
            path: path.to_owned(),
            detail: "the zstd frame is empty".into(),
        });
    }
    w.flush().map_err(C1zError::io("write", db))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip_setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("in.db");
        std::fs::write(
            &db,
            b"SQLite format 3\0 and then some bytes bytes bytes bytes".repeat(100),
        )
        .unwrap();
        let out = dir.path().join("x.c1z");
        (dir, db, out)
    }

    #[test]
    fn roundtrip_and_frame_header() {
        let (dir, db, out) = roundtrip_setup();
        write_c1z(&db, &out, CompressOptions::default()).unwrap();
        assert!(!tmp_path(&out).exists());
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(&bytes[..5], MAGIC_V1);
        assert_eq!(&bytes[5..9], &[0x28, 0xB5, 0x2F, 0xFD]); // zstd frame magic
        let fhd = bytes[9];
        assert_ne!(fhd & 0x04, 0, "content checksum flag");
        assert_ne!(fhd >> 6 | (fhd & 0x20), 0, "content size recorded");
        let back = dir.path().join("back.db");
        read_c1z(&out, &back, DEFAULT_MAX_DECODED).unwrap();
        assert_eq!(std::fs::read(&back).unwrap(), std::fs::read(&db).unwrap());
    }

    #[test]
    fn refuses_bad_files() {
        let (dir, db, out) = roundtrip_setup();
        write_c1z(
            &db,
            &out,
            CompressOptions {
                level: 1,
                workers: 0,
                job_size: 0,
            },
        )
        .unwrap();
        let good = std::fs::read(&out).unwrap();
        let back = dir.path().join("back.db");
        let check = |bytes: &[u8]| {
            let p = dir.path().join("bad.c1z");
            std::fs::write(&p, bytes).unwrap();
            read_c1z(&p, &back, DEFAULT_MAX_DECODED).unwrap_err()
        };
        assert!(matches!(check(b"C1Z3\0rest"), C1zError::C1z3 { .. }));
        assert!(matches!(check(b"PK\x03\x04zip"), C1zError::NotC1z { .. }));
        assert!(matches!(check(b""), C1zError::NotC1z { .. }));
        assert!(matches!(check(b"C1Z"), C1zError::Corrupt { .. }));
        assert!(matches!(check(&good[..good.len() / 2]), C1zError::Corrupt { .. }));
        assert!(matches!(check(&good[..good.len() - 1]), C1zError::Corrupt { .. }));
        let mut flipped = good.clone();
        let mid = flipped.len() / 2;
        flipped[mid] ^= 0x55;
        assert!(matches!(check(&flipped), C1zError::Corrupt { .. }));
        let p = dir.path().join("ok.c1z");
        std::fs::write(&p, &good).unwrap();
        assert!(matches!(
            read_c1z(&p, &back, 10).unwrap_err(),
            C1zError::TooLarge { .. }
        ));
    }
}
