//! Splice independently compressed byte ranges into ONE zstd frame without recompressing them.
//!
//! A c1z file is `C1ZF\0` followed by a single zstd frame (RFC 8878). This module lets different byte
//! ranges ("pieces") of the content be compressed by separate, fresh zstd compressors, in any order and on
//! any thread, and then be assembled, in content order, into one valid frame with a content checksum.
//! Assembling copies the pieces' compressed blocks as they are; the only work over the content is the XXH64
//! pass that the checksum needs.
//!
//! # Why a piece's blocks cannot simply be concatenated
//!
//! The blocks of a zstd frame are not independent. A decoder carries three kinds of state from one
//! compressed block to the next (RFC 8878 sections 3.1.1.3 and 3.1.1.5):
//!
//! 1. the window: matches may copy from anything decoded earlier in the frame;
//! 2. the entropy tables: a block may say "reuse the previous Huffman tree" (Treeless literals) or "reuse
//!    the previous FSE table" (Repeat_Mode) for its literal-length, offset or match-length codes;
//! 3. the three repeat offsets, which every frame starts as {1, 4, 8} and every sequence updates.
//!
//! A fresh compressor with no dictionary and no prefix only ever produces a valid *stand-alone* frame, so
//! (1) its matches never reach before the start of its own input, and (2) its first compressed block never
//! reuses a table: libzstd starts every frame from `ZSTD_reset_compressedBlockState`, which sets the
//! Huffman and all three FSE repeat states to `*_repeat_none`, and it only picks Treeless literals or
//! Repeat_Mode when that state is not `none` (`ZSTD_selectEncodingType`, `ZSTD_compressLiterals`).
//! libzstd's own multithreaded mode relies on the same property: it compresses the jobs of one frame with
//! separately begun contexts and concatenates their blocks. A test checks every block of about a thousand
//! pieces at levels -5 to 19: a piece only ever reuses a table that one of its own earlier blocks defined.
//!
//! Point (3) is the real obstacle: after piece A the decoder's repeat offsets are whatever A's last
//! sequences left, while the compressor of piece B assumed {1, 4, 8}, so B's repeat-offset codes would copy
//! from the wrong distance. (libzstd's multithreaded mode avoids it on the compressor side, with an internal
//! function that zeroes the compressor's repeat offsets; the public API has no such call.) The tests show
//! that concatenating pieces without a reset corrupts realistic data.
//!
//! # The rep-reset block
//!
//! Between two pieces the assembler inserts [`REP_RESET_BLOCK`], a 13-byte compressed block built by hand
//! that decodes to [`REP_RESET_ZEROS`] (9) zero bytes and leaves the repeat offsets at exactly {1, 4, 8}:
//!
//! - block header `54 00 00`: Last_Block = 0, Block_Type = 2 (Compressed), Block_Size = 10;
//! - literals section `00`: Raw_Literals_Block, Regenerated_Size = 0;
//! - sequences section header `03 00`: Number_of_Sequences = 3, Symbol_Compression_Modes = 0 (predefined
//!   FSE distributions for literal lengths, offsets and match lengths);
//! - the backward bitstream `38 00 76 00 0C 28 40` for the sequences (literal length 0, Offset_Value 11,
//!   match length 3), (0, 7, 3), (0, 4, 3).
//!
//! An Offset_Value above 3 is always an explicit offset (offset = Offset_Value - 3), and an explicit offset
//! shifts the repeat offsets down and becomes the first one. The three explicit offsets 8, 4, 1 therefore
//! leave them at rep1 = 1, rep2 = 4, rep3 = 8, whatever they were before; literal length 0 does not matter
//! for explicit offsets. The offset codes are floor(log2(Offset_Value)) = 3, 2, 2 with 3, 2, 2 extra bits
//! (values 3, 3, 0); literal-length code 0 and match-length code 0 (length 3) have no extra bits. In the
//! predefined tables the chosen states are LL 0 (4 bits, baseline 0), ML 0 (6 bits, baseline 0), OF 5 for
//! code 3 and OF 14 for code 2 (5 bits, baseline 0 each), so the decoder reads, from the end of the
//! stream after skipping the zero padding and the 1 marker bit: initial states LL = 0 (6 bits), OF = 5
//! (5 bits), ML = 0 (6 bits); then for each sequence its offset extra bits (the match-length and
//! literal-length extra bits, read next, are empty) and, except after the last sequence, the state updates
//! LL (4 bits = 0), ML (6 bits = 0), OF (5 bits = next state 14). That is 54 bits plus the marker, so 7
//! bytes.
//!
//! The first match copies 3 bytes starting 8 bytes before the block, the second (offset 4) starts at the
//! last byte before the block, the third (offset 1) repeats the block's own last byte. So the block decodes
//! to nine zero bytes **if the 8 bytes decoded before it are zero** ([`REP_RESET_PRECEDING_ZEROS`]); with
//! other bytes there it decodes to other bytes, and a decoder rejects it if fewer than 8 bytes precede it
//! in the frame. Its other side effects are harmless: its predefined FSE tables become the "previous"
//! tables, and it leaves the Huffman tree as it was; a fresh compressor never reuses either (above).
//!
//! # The contract
//!
//! The caller cuts the content at boundaries that each lie in a run of at least [`BOUNDARY_ZEROS`] (17) zero
//! bytes: 8 that end the piece before the boundary and 9 that the rep-reset block stands for. With the
//! content `C` and boundaries `b1 < b2 < ... < bk`:
//!
//! - the pieces are `C[0..b1]`, `C[b1 + 9..b2]`, ..., `C[bk + 9..]` (Rust ranges; all but the first may be
//!   empty);
//! - `C[bi - 8 .. bi + 9]` is all zeros for every boundary (the 8 bytes before `bi` may also come from an
//!   earlier piece or rep-reset block when a piece is shorter than 8 bytes: what counts is the content);
//! - each piece is compressed on its own with [`compress_piece`] or [`PieceEncoder`] (window log
//!   [`WINDOW_LOG`], no dictionary), in any order;
//! - [`FrameAssembler`] then takes the pieces in content order, each followed by exactly its content
//!   (for the checksum), and writes the rep-reset block between consecutive pieces itself.
//!
//! Two variations: a piece may be compressed with the content right before it as the prefix of its
//! matches ([`compress_piece_after`]; the caller promises those bytes), and the last piece may be
//! compressed while its content is streamed through ([`FrameAssembler::into_tail`]), its blocks going
//! straight to the output. `pieces` uses both to assemble the c1z of a large grant table.
//!
//! The assembler checks what it can: that each piece's content has the piece's length, that the content
//! before every rep-reset block ends with 8 zeros, and, when a content size was declared, that the total
//! matches. It cannot check that a piece's blocks decode to the content it is given: that is the caller's
//! promise, and the checksum would expose a broken one when the file is read.
//!
//! # Other invariants
//!
//! - Window: the frame declares an 8 MiB window (log 23) and every piece is compressed with at most that
//!   window, so no match in a piece reaches further back than the frame allows. Pieces smaller than the
//!   window may get a smaller one from libzstd; that is fine.
//! - Block size: libzstd never emits blocks over 128 KiB (Block_Maximum_Size for an 8 MiB window).
//! - Frame end: the last block is an empty Raw block with Last_Block = 1, followed by the low 32 bits of
//!   XXH64 (seed 0) of the whole content, little-endian. The pieces' own last-block flags are cleared.
//! - XXH64 cannot be combined from per-piece hashes, so it is computed in content order as the pieces are
//!   appended; with the first page compressed last, that is one pass over the content at the end.

use std::io::{self, Write};

/// Window log of the frame and the largest window log of every piece: 8 MiB, which every reader accepts.
pub(crate) const WINDOW_LOG: u32 = 23;

/// Zero bytes that must immediately precede [`REP_RESET_BLOCK`] in the content (it copies from 8 back).
pub(crate) const REP_RESET_PRECEDING_ZEROS: usize = 8;

/// Zero bytes that [`REP_RESET_BLOCK`] decodes to.
pub(crate) const REP_RESET_ZEROS: usize = 9;

/// Length of the zero run each piece boundary must lie in: the 8 bytes before the boundary and the 9
/// bytes the rep-reset block stands for.
pub(crate) const BOUNDARY_ZEROS: usize = REP_RESET_PRECEDING_ZEROS + REP_RESET_ZEROS;

/// The rep-reset block, header included (Last_Block = 0). See the module documentation for its layout.
pub(crate) const REP_RESET_BLOCK: [u8; 13] = [
    0x54, 0x00, 0x00, // Block_Header: Last_Block 0, Compressed, Block_Size 10
    0x00, // Literals_Section_Header: Raw, Regenerated_Size 0
    0x03, // Number_of_Sequences 3
    0x00, // Symbol_Compression_Modes: predefined LL, OF, ML
    0x38, 0x00, 0x76, 0x00, 0x0C, 0x28, 0x40, // sequences bitstream
];

#[cfg(test)]
/// The rep-reset block as a slice.
pub(crate) fn rep_reset_block() -> &'static [u8] {
    &REP_RESET_BLOCK
}

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
/// Window_Descriptor for 2^WINDOW_LOG bytes: Exponent = WINDOW_LOG - 10, Mantissa = 0.
const WINDOW_DESCRIPTOR: u8 = ((WINDOW_LOG - 10) << 3) as u8;
/// Frame_Header_Descriptor bit 2.
const CONTENT_CHECKSUM_FLAG: u8 = 0x04;
#[cfg(test)]
/// An empty Raw block with Last_Block = 1.
const LAST_EMPTY_RAW_BLOCK: [u8; 3] = [0x01, 0x00, 0x00];
const BLOCK_TYPE_RAW: u32 = 0;
const BLOCK_TYPE_RLE: u32 = 1;
const BLOCK_TYPE_COMPRESSED: u32 = 2;
const MAX_BLOCK_SIZE: usize = 128 * 1024;

fn invalid_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

fn invalid_data(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// One piece of content compressed on its own: the blocks of a zstd frame without the frame header, the
/// last-block flag or a checksum, ready to be spliced into a frame by [`FrameAssembler`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Piece {
    blocks: Vec<u8>,
    content_len: u64,
}

impl Piece {
    #[cfg(test)]
    /// The compressed blocks (possibly none, for an empty piece).
    pub(crate) fn blocks(&self) -> &[u8] {
        &self.blocks
    }

    /// Turns a complete single frame from libzstd (no checksum, no dictionary, window at most
    /// 2^WINDOW_LOG) into its blocks.
    pub(crate) fn from_frame(mut frame: Vec<u8>, content_len: u64) -> io::Result<Self> {
        let header_len = frame_header_len(&frame)?;
        frame.drain(..header_len);
        let mut pos = 0;
        loop {
            let Some(h) = frame.get(pos..pos + 3) else {
                return Err(invalid_data(format!(
                    "zstd frame truncated in a block header at byte {pos}"
                )));
            };
            let header = u32::from(h[0]) | u32::from(h[1]) << 8 | u32::from(h[2]) << 16;
            let last = header & 1 == 1;
            let size = (header >> 3) as usize;
            let body = match (header >> 1) & 3 {
                BLOCK_TYPE_RAW | BLOCK_TYPE_COMPRESSED => size,
                BLOCK_TYPE_RLE => 1,
                _ => {
                    return Err(invalid_data(format!(
                        "zstd block with the reserved type at byte {pos}"
                    )));
                }
            };
            if size > MAX_BLOCK_SIZE {
                return Err(invalid_data(format!("zstd block of {size} bytes at byte {pos}")));
            }
            let end = pos + 3 + body;
            if end > frame.len() {
                return Err(invalid_data(format!(
                    "zstd frame truncated in the block at byte {pos}"
                )));
            }
            if last {
                if end != frame.len() {
                    return Err(invalid_data(format!(
                        "{} unexpected bytes after the last zstd block",
                        frame.len() - end
                    )));
                }
                if (header >> 1) & 3 == BLOCK_TYPE_RAW && size == 0 {
                    // An empty last block carries nothing once the flag is gone.
                    frame.truncate(pos);
                } else {
                    frame[pos] &= !1;
                }
                return Ok(Self {
                    blocks: frame,
                    content_len,
                });
            }
            pos = end;
        }
    }
}

/// The length of the frame header (magic number included) at the start of `frame`, after checking that
/// the frame has no dictionary, no checksum and a window of at most 2^WINDOW_LOG bytes.
fn frame_header_len(frame: &[u8]) -> io::Result<usize> {
    if frame.get(..4) != Some(&ZSTD_MAGIC[..]) {
        return Err(invalid_data("not a zstd frame".into()));
    }
    let Some(&fhd) = frame.get(4) else {
        return Err(invalid_data("zstd frame header truncated".into()));
    };
    let single_segment = fhd & 0x20 != 0;
    if fhd & 0x08 != 0 || fhd & CONTENT_CHECKSUM_FLAG != 0 || fhd & 0x03 != 0 {
        return Err(invalid_data(format!(
            "zstd frame header descriptor {fhd:#04x} has a reserved bit, a checksum or a dictionary"
        )));
    }
    let mut len = 5;
    if !single_segment {
        let Some(&wd) = frame.get(5) else {
            return Err(invalid_data("zstd frame header truncated".into()));
        };
        let base = 1u64 << (10 + u32::from(wd >> 3));
        let window = base + base / 8 * u64::from(wd & 7);
        if window > 1 << WINDOW_LOG {
            return Err(invalid_data(format!(
                "zstd frame window of {window} bytes exceeds 8 MiB"
            )));
        }
        len += 1;
    }
    len += match fhd >> 6 {
        0 => usize::from(single_segment),
        1 => 2,
        2 => 4,
        _ => 8,
    };
    if frame.len() < len {
        return Err(invalid_data("zstd frame header truncated".into()));
    }
    Ok(len)
}

#[cfg(test)]
/// Compresses `data` as one piece with a fresh compressor at `level`.
pub(crate) fn compress_piece(data: &[u8], level: i32) -> io::Result<Piece> {
    if data.is_empty() {
        return Ok(Piece {
            blocks: Vec::new(),
            content_len: 0,
        });
    }
    let frame = piece_compressor(level)?.compress(data)?;
    Piece::from_frame(frame, data.len() as u64)
}

/// A compressor of the stand-alone frames of pieces at `level` (no checksum, no content size, no
/// dictionary id, window at most 2^WINDOW_LOG), to reuse from one piece to the next.
pub(crate) fn piece_compressor(level: i32) -> io::Result<zstd::bulk::Compressor<'static>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level)?;
    c.set_parameter(CParameter::WindowLog(WINDOW_LOG))?;
    c.set_parameter(CParameter::ChecksumFlag(false))?;
    c.set_parameter(CParameter::ContentSizeFlag(false))?;
    c.set_parameter(CParameter::DictIdFlag(false))?;
    Ok(c)
}

/// A streaming encoder of one piece's frame into `out`, with the settings of [`piece_compressor`].
fn piece_encoder<W: Write>(out: W, level: i32) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    let mut enc = zstd::stream::write::Encoder::new(out, level)?;
    enc.window_log(WINDOW_LOG)?;
    enc.include_checksum(false)?;
    enc.include_contentsize(false)?;
    enc.include_dictid(false)?;
    Ok(enc)
}

/// Compresses `data` as one piece whose matches may also reach back into `prefix`: the content that comes
/// immediately before the piece in the frame, the 9 zeros of the rep-reset block before it included (a
/// piece compressed alone starts without history, which costs ratio on small pieces). The caller
/// promises that the frame's content before the piece ends with exactly these bytes; the window bounds
/// how far back matches reach as for any piece. libzstd loads a prefix as raw content: the piece's first
/// block still defines its own entropy tables and starts from the repeat offsets {1, 4, 8}.
pub(crate) fn compress_piece_after(data: &[u8], prefix: &[u8], level: i32) -> io::Result<Piece> {
    use zstd::zstd_safe::{CCtx, CParameter};
    if data.is_empty() {
        return Ok(Piece {
            blocks: Vec::new(),
            content_len: 0,
        });
    }
    // The prefix right before the data in memory: libzstd then matches into both as one segment (its
    // faster path) instead of treating the prefix as a separate one.
    let mut joined = Vec::with_capacity(prefix.len() + data.len());
    joined.extend_from_slice(prefix);
    joined.extend_from_slice(data);
    let err = |code: usize| io::Error::other(zstd::zstd_safe::get_error_name(code));
    let mut c = CCtx::create();
    c.set_parameter(CParameter::CompressionLevel(level))
        .map_err(err)?;
    c.set_parameter(CParameter::WindowLog(WINDOW_LOG)).map_err(err)?;
    c.set_parameter(CParameter::ChecksumFlag(false)).map_err(err)?;
    c.set_parameter(CParameter::ContentSizeFlag(false)).map_err(err)?;
    c.set_parameter(CParameter::DictIdFlag(false)).map_err(err)?;
    let (before, src) = joined.split_at(prefix.len());
    c.ref_prefix(before).map_err(err)?;
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(data.len()));
    c.compress2(&mut frame, src).map_err(err)?;
    Piece::from_frame(frame, data.len() as u64)
}

/// Compresses one piece as it is written, for content produced a little at a time.
pub(crate) struct PieceEncoder {
    enc: zstd::stream::write::Encoder<'static, Vec<u8>>,
    len: u64,
}

impl PieceEncoder {
    /// A fresh compressor at `level`; `size`, when known, lets libzstd size its tables (writing a different
    /// number of bytes is then an error).
    pub(crate) fn new(level: i32, size: Option<u64>) -> io::Result<Self> {
        let mut enc = piece_encoder(Vec::new(), level)?;
        enc.set_pledged_src_size(size)?;
        Ok(Self { enc, len: 0 })
    }

    /// Ends the piece.
    pub(crate) fn finish(self) -> io::Result<Piece> {
        let (frame, len) = self.finish_frame()?;
        Piece::from_frame(frame, len)
    }

    /// Ends the piece, as the stand-alone frame libzstd wrote (decodable on its own; [`Piece::from_frame`]
    /// turns it into the piece) and its content length.
    pub(crate) fn finish_frame(self) -> io::Result<(Vec<u8>, u64)> {
        Ok((self.enc.finish()?, self.len))
    }
}

impl Write for PieceEncoder {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.enc.write(buf)?;
        self.len += n as u64;
        Ok(n)
    }

    /// Does nothing: flushing the compressor would only end a block early.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Writes one zstd frame made of pieces: the frame header, then for each piece (the rep-reset block
/// before every piece but the first) its blocks, then an empty last block and the content checksum.
///
/// After [`push_piece`](Self::push_piece), the piece's content must be given, in order and in full, to
/// [`content`](Self::content) before the next piece or [`finish`](Self::finish); [`push`](Self::push) does
/// both. On an error the output is unusable: nothing is written for a call that fails its checks, but a
/// failed write may have left a partial one.
pub(crate) struct FrameAssembler<W: Write> {
    out: W,
    hash: Xxh64,
    declared_size: Option<u64>,
    content_len: u64,
    written: u64,
    pieces: u64,
    /// Content bytes of the last piece not yet given to `content`.
    pending: u64,
    /// How many zero bytes the content so far ends with.
    trailing_zeros: u64,
}

impl<W: Write> FrameAssembler<W> {
    /// Writes the frame header: content checksum on, 8 MiB window, and the content size if given (the
    /// total then has to match).
    pub(crate) fn new(mut out: W, content_size: Option<u64>) -> io::Result<Self> {
        let mut header = Vec::with_capacity(14);
        header.extend_from_slice(&ZSTD_MAGIC);
        match content_size.map(|n| (n, u32::try_from(n))) {
            None => header.extend_from_slice(&[CONTENT_CHECKSUM_FLAG, WINDOW_DESCRIPTOR]),
            Some((_, Ok(n))) => {
                header.extend_from_slice(&[2 << 6 | CONTENT_CHECKSUM_FLAG, WINDOW_DESCRIPTOR]);
                header.extend_from_slice(&n.to_le_bytes());
            }
            Some((n, Err(_))) => {
                header.extend_from_slice(&[3 << 6 | CONTENT_CHECKSUM_FLAG, WINDOW_DESCRIPTOR]);
                header.extend_from_slice(&n.to_le_bytes());
            }
        }
        out.write_all(&header)?;
        Ok(Self {
            out,
            hash: Xxh64::new(0),
            declared_size: content_size,
            content_len: 0,
            written: header.len() as u64,
            pieces: 0,
            pending: 0,
            trailing_zeros: 0,
        })
    }

    /// Appends the next piece in content order, with the rep-reset block before it unless it is the first.
    /// The content so far must then end with [`REP_RESET_PRECEDING_ZEROS`] zero bytes.
    pub(crate) fn push_piece(&mut self, piece: &Piece) -> io::Result<()> {
        self.check_no_pending()?;
        if self.pieces > 0 {
            if self.trailing_zeros < REP_RESET_PRECEDING_ZEROS as u64 {
                return Err(invalid_input(format!(
                    "piece {} starts after content that ends with {} zero bytes; a piece boundary needs {} \
                     (cut the content inside a run of {BOUNDARY_ZEROS} zero bytes)",
                    self.pieces, self.trailing_zeros, REP_RESET_PRECEDING_ZEROS
                )));
            }
            self.out.write_all(&REP_RESET_BLOCK)?;
            self.written += REP_RESET_BLOCK.len() as u64;
            self.hash.update(&[0; REP_RESET_ZEROS]);
            self.content_len += REP_RESET_ZEROS as u64;
            self.trailing_zeros += REP_RESET_ZEROS as u64;
        }
        self.out.write_all(&piece.blocks)?;
        self.written += piece.blocks.len() as u64;
        self.pieces += 1;
        self.pending = piece.content_len;
        Ok(())
    }

    /// Gives (the next part of) the content of the piece last pushed, for the checksum.
    pub(crate) fn content(&mut self, bytes: &[u8]) -> io::Result<()> {
        if bytes.len() as u64 > self.pending {
            return Err(invalid_input(format!(
                "{} bytes of content given for piece {} which has {} left",
                bytes.len(),
                self.pieces.saturating_sub(1),
                self.pending
            )));
        }
        self.pending -= bytes.len() as u64;
        self.content_len += bytes.len() as u64;
        self.hash.update(bytes);
        match bytes.iter().rposition(|&b| b != 0) {
            Some(i) => self.trailing_zeros = (bytes.len() - 1 - i) as u64,
            None => self.trailing_zeros += bytes.len() as u64,
        }
        Ok(())
    }

    /// [`push_piece`](Self::push_piece) followed by [`content`](Self::content) with all of its content.
    pub(crate) fn push(&mut self, piece: &Piece, content: &[u8]) -> io::Result<()> {
        if content.len() as u64 != piece.content_len {
            return Err(invalid_input(format!(
                "piece {} decodes to {} bytes but {} bytes of content were given",
                self.pieces,
                piece.content_len,
                content.len()
            )));
        }
        self.push_piece(piece)?;
        self.content(content)
    }

    #[cfg(test)]
    /// Bytes of content so far, the rep-reset zeros included.
    pub(crate) fn content_len(&self) -> u64 {
        self.content_len
    }

    #[cfg(test)]
    /// Bytes of frame written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    #[cfg(test)]
    /// Ends the frame with an empty last block and the checksum, and hands back the output.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.check_no_pending()?;
        if let Some(declared) = self.declared_size
            && declared != self.content_len
        {
            return Err(invalid_input(format!(
                "the frame header declares {declared} bytes of content but the pieces hold {}",
                self.content_len
            )));
        }
        let checksum = (self.hash.digest() as u32).to_le_bytes();
        self.out.write_all(&LAST_EMPTY_RAW_BLOCK)?;
        self.out.write_all(&checksum)?;
        Ok(self.out)
    }

    /// Ends the frame with one last piece compressed here from content written to the returned
    /// [`TailWriter`] (for a large last part that should not be read twice: its blocks go straight to the
    /// output, and the content is hashed as it passes). `workers` as libzstd's (0 = this thread).
    pub(crate) fn into_tail(mut self, level: i32, workers: u32, job_size: u32) -> io::Result<TailWriter<W>> {
        self.check_no_pending()?;
        if self.pieces > 0 {
            if self.trailing_zeros < REP_RESET_PRECEDING_ZEROS as u64 {
                return Err(invalid_input(format!(
                    "the last piece starts after content that ends with {} zero bytes; a piece boundary \
                     needs {REP_RESET_PRECEDING_ZEROS}",
                    self.trailing_zeros
                )));
            }
            self.out.write_all(&REP_RESET_BLOCK)?;
            self.written += REP_RESET_BLOCK.len() as u64;
            self.hash.update(&[0; REP_RESET_ZEROS]);
            self.content_len += REP_RESET_ZEROS as u64;
        }
        let mut enc = piece_encoder(
            StripHeader {
                out: self.out,
                head: Vec::new(),
                passing: false,
            },
            level,
        )?;
        if workers > 0 {
            enc.multithread(workers)?;
            if job_size > 0 {
                enc.set_parameter(zstd::stream::raw::CParameter::JobSize(job_size))?;
            }
        }
        Ok(TailWriter {
            enc,
            hash: self.hash,
            declared_size: self.declared_size,
            content_len: self.content_len,
        })
    }

    fn check_no_pending(&self) -> io::Result<()> {
        if self.pending != 0 {
            return Err(invalid_input(format!(
                "piece {} still lacks {} bytes of content",
                self.pieces.saturating_sub(1),
                self.pending
            )));
        }
        Ok(())
    }
}

/// Passes a libzstd frame on without its frame header (the blocks of a last piece; see
/// [`FrameAssembler::into_tail`]).
struct StripHeader<W: Write> {
    out: W,
    /// The header so far, until it is complete.
    head: Vec<u8>,
    passing: bool,
}

impl<W: Write> Write for StripHeader<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.passing {
            return self.out.write(buf);
        }
        self.head.extend_from_slice(buf);
        // The header is at most 18 bytes; it is complete once its length can be told.
        if let Ok(n) = frame_header_len(&self.head) {
            self.passing = true;
            let rest = self.head.split_off(n);
            self.out.write_all(&rest)?;
        } else if self.head.len() > 18 {
            return Err(invalid_data(
                "libzstd began its frame with an unexpected header".into(),
            ));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// The last piece of a frame, compressed as its content is written (see [`FrameAssembler::into_tail`]);
/// [`finish`](Self::finish) ends the frame. Its blocks keep libzstd's last-block flag: only the checksum
/// follows them.
pub(crate) struct TailWriter<W: Write> {
    enc: zstd::stream::write::Encoder<'static, StripHeader<W>>,
    hash: Xxh64,
    declared_size: Option<u64>,
    content_len: u64,
}

impl<W: Write> TailWriter<W> {
    /// Ends the frame (the checksum after the last block) and hands back the output.
    pub(crate) fn finish(self) -> io::Result<W> {
        if let Some(declared) = self.declared_size
            && declared != self.content_len
        {
            return Err(invalid_input(format!(
                "the frame header declares {declared} bytes of content but the pieces hold {}",
                self.content_len
            )));
        }
        let strip = self.enc.finish()?;
        if !strip.passing {
            return Err(invalid_data("libzstd ended its frame inside the header".into()));
        }
        let mut out = strip.out;
        out.write_all(&(self.hash.digest() as u32).to_le_bytes())?;
        Ok(out)
    }
}

impl<W: Write> Write for TailWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.enc.write(buf)?;
        self.hash.update(&buf[..n]);
        self.content_len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

const P1: u64 = 0x9E37_79B1_85EB_CA87;
const P2: u64 = 0xC2B2_AE3D_27D4_EB4F;
const P3: u64 = 0x1656_67B1_9E37_79F9;
const P4: u64 = 0x85EB_CA77_C2B2_AE63;
const P5: u64 = 0x27D4_EB2F_1656_67C5;

/// Streaming XXH64, the hash behind zstd's content checksum.
#[derive(Debug, Clone)]
pub(crate) struct Xxh64 {
    seed: u64,
    acc: [u64; 4],
    buf: [u8; 32],
    buf_len: usize,
    total: u64,
}

fn xxh_round(acc: u64, lane: u64) -> u64 {
    acc.wrapping_add(lane.wrapping_mul(P2))
        .rotate_left(31)
        .wrapping_mul(P1)
}

fn xxh_merge(h: u64, acc: u64) -> u64 {
    (h ^ xxh_round(0, acc)).wrapping_mul(P1).wrapping_add(P4)
}

fn le_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_le_bytes(a)
}

fn le_u32(b: &[u8]) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

impl Xxh64 {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            seed,
            acc: [
                seed.wrapping_add(P1).wrapping_add(P2),
                seed.wrapping_add(P2),
                seed,
                seed.wrapping_sub(P1),
            ],
            buf: [0; 32],
            buf_len: 0,
            total: 0,
        }
    }

    fn stripe(acc: &mut [u64; 4], s: &[u8]) {
        acc[0] = xxh_round(acc[0], le_u64(&s[0..8]));
        acc[1] = xxh_round(acc[1], le_u64(&s[8..16]));
        acc[2] = xxh_round(acc[2], le_u64(&s[16..24]));
        acc[3] = xxh_round(acc[3], le_u64(&s[24..32]));
    }

    pub(crate) fn update(&mut self, mut data: &[u8]) {
        self.total += data.len() as u64;
        if self.buf_len > 0 {
            let take = (32 - self.buf_len).min(data.len());
            self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
            self.buf_len += take;
            data = &data[take..];
            if self.buf_len < 32 {
                return;
            }
            let buf = self.buf;
            Self::stripe(&mut self.acc, &buf);
            self.buf_len = 0;
        }
        let mut stripes = data.chunks_exact(32);
        for s in &mut stripes {
            Self::stripe(&mut self.acc, s);
        }
        let rest = stripes.remainder();
        self.buf[..rest.len()].copy_from_slice(rest);
        self.buf_len = rest.len();
    }

    pub(crate) fn digest(&self) -> u64 {
        let mut h = if self.total >= 32 {
            let [a, b, c, d] = self.acc;
            let mut h = a
                .rotate_left(1)
                .wrapping_add(b.rotate_left(7))
                .wrapping_add(c.rotate_left(12))
                .wrapping_add(d.rotate_left(18));
            for v in self.acc {
                h = xxh_merge(h, v);
            }
            h
        } else {
            self.seed.wrapping_add(P5)
        };
        h = h.wrapping_add(self.total);
        let mut tail = &self.buf[..self.buf_len];
        while tail.len() >= 8 {
            h ^= xxh_round(0, le_u64(tail));
            h = h.rotate_left(27).wrapping_mul(P1).wrapping_add(P4);
            tail = &tail[8..];
        }
        if tail.len() >= 4 {
            h ^= u64::from(le_u32(tail)).wrapping_mul(P1);
            h = h.rotate_left(23).wrapping_mul(P2).wrapping_add(P3);
            tail = &tail[4..];
        }
        for &b in tail {
            h ^= u64::from(b).wrapping_mul(P5);
            h = h.rotate_left(11).wrapping_mul(P1);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(P2);
        h ^= h >> 29;
        h = h.wrapping_mul(P3);
        h ^ (h >> 32)
    }
}

#[cfg(test)]
/// XXH64 of `data` with `seed`.
pub(crate) fn xxh64(data: &[u8], seed: u64) -> u64 {
    let mut h = Xxh64::new(seed);
    h.update(data);
    h.digest()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::process::Command;

    /// A compressed block built by hand with the predefined FSE distributions (RFC 8878 3.1.1.3.2.2):
    /// enough to derive [`REP_RESET_BLOCK`] independently of the constant, and to probe the decoder.
    mod handmade {
        pub(super) struct Seq {
            pub(super) ll: u32,
            pub(super) of_value: u32,
            pub(super) ml: u32,
        }

        fn ll_norm() -> Vec<i16> {
            vec![
                4, 3, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 2, 3, 2, 1, 1, 1, 1,
                1, -1, -1, -1, -1,
            ]
        }

        fn ml_norm() -> Vec<i16> {
            let mut n = vec![1, 4, 3, 2, 2, 2, 2, 2, 2];
            n.extend([1; 37]);
            n.extend([-1; 7]);
            n
        }

        fn of_norm() -> Vec<i16> {
            let mut n = vec![1, 1, 1, 1, 1, 1, 2, 2, 2];
            n.extend([1; 15]);
            n.extend([-1; 5]);
            n
        }

        /// Cell = (symbol, Number_of_Bits, Baseline), built as RFC 8878 4.1.1 describes.
        type Cell = (usize, u32, u32);

        fn decode_table(norm: &[i16], log: u32) -> Vec<Cell> {
            let size = 1usize << log;
            assert_eq!(
                norm.iter().map(|&n| n.unsigned_abs() as usize).sum::<usize>(),
                size
            );
            let mut symbol = vec![usize::MAX; size];
            let mut high = size - 1;
            for (s, &n) in norm.iter().enumerate() {
                if n == -1 {
                    symbol[high] = s;
                    high -= 1;
                }
            }
            let step = (size >> 1) + (size >> 3) + 3;
            let mut pos = 0;
            for (s, &n) in norm.iter().enumerate() {
                for _ in 0..n.max(0) {
                    symbol[pos] = s;
                    pos = (pos + step) & (size - 1);
                    while pos > high {
                        pos = (pos + step) & (size - 1);
                    }
                }
            }
            assert_eq!(pos, 0, "the spread must visit every cell once");
            let mut next: Vec<u32> = norm
                .iter()
                .map(|&n| if n == -1 { 1 } else { n.max(0) as u32 })
                .collect();
            symbol
                .iter()
                .map(|&s| {
                    let x = next[s];
                    next[s] += 1;
                    let nb = log - x.ilog2();
                    (s, nb, (x << nb) - size as u32)
                })
                .collect()
        }

        /// States that decode `symbols` in order: the initial state, and for each step the bits
        /// `(value, count)` the decoder reads to go to the next state.
        fn encode_states(table: &[Cell], symbols: &[usize]) -> (u32, Vec<(u32, u32)>) {
            let mut state = table
                .iter()
                .position(|c| c.0 == *symbols.last().unwrap())
                .unwrap() as u32;
            let mut steps = Vec::new();
            for &s in symbols[..symbols.len() - 1].iter().rev() {
                let (x, &(_, nb, base)) = table
                    .iter()
                    .enumerate()
                    .find(|(_, c)| c.0 == s && c.2 <= state && state < c.2 + (1 << c.1))
                    .unwrap();
                steps.push((state - base, nb));
                state = x as u32;
            }
            steps.reverse();
            (state, steps)
        }

        /// Writes fields so that a zstd backward bit reader reads them in the given order.
        fn backward_bitstream(read_order: &[(u32, u32)]) -> Vec<u8> {
            let mut bits: Vec<bool> = Vec::new(); // least significant first
            for &(value, count) in read_order.iter().rev() {
                assert!(
                    count == 0 || value >> count == 0,
                    "{value} does not fit {count} bits"
                );
                bits.extend((0..count).map(|i| value >> i & 1 == 1));
            }
            bits.push(true);
            while !bits.len().is_multiple_of(8) {
                bits.push(false);
            }
            bits.chunks(8)
                .map(|b| b.iter().rev().fold(0u8, |acc, &bit| acc << 1 | u8::from(bit)))
                .collect()
        }

        /// A Compressed block with raw literals (fewer than 32), fewer than 128 sequences with literal
        /// lengths below 16 and match lengths 3..=34, and predefined tables for all three codes.
        pub(super) fn compressed_block(literals: &[u8], seqs: &[Seq], last: bool) -> Vec<u8> {
            assert!(literals.len() < 32 && !seqs.is_empty() && seqs.len() < 128);
            let ll_codes: Vec<usize> = seqs.iter().map(|s| s.ll as usize).collect();
            let ml_codes: Vec<usize> = seqs.iter().map(|s| s.ml as usize - 3).collect();
            let of_codes: Vec<usize> = seqs.iter().map(|s| s.of_value.ilog2() as usize).collect();
            assert!(ll_codes.iter().all(|&c| c < 16) && ml_codes.iter().all(|&c| c < 32));
            let (ll0, ll_steps) = encode_states(&decode_table(&ll_norm(), 6), &ll_codes);
            let (of0, of_steps) = encode_states(&decode_table(&of_norm(), 5), &of_codes);
            let (ml0, ml_steps) = encode_states(&decode_table(&ml_norm(), 6), &ml_codes);
            let mut fields = vec![(ll0, 6), (of0, 5), (ml0, 6)];
            for (i, s) in seqs.iter().enumerate() {
                let of_bits = of_codes[i] as u32;
                fields.push((s.of_value - (1 << of_bits), of_bits)); // offset extra bits
                fields.push((0, 0)); // match length: codes 0..=31 have no extra bits
                fields.push((0, 0)); // literal length: codes 0..=15 have no extra bits
                if i + 1 < seqs.len() {
                    fields.extend([ll_steps[i], ml_steps[i], of_steps[i]]);
                }
            }
            let mut body = vec![(literals.len() as u8) << 3]; // Raw_Literals_Block, 1-byte header
            body.extend_from_slice(literals);
            body.push(seqs.len() as u8);
            body.push(0); // predefined modes
            body.extend(backward_bitstream(&fields));
            let header = (body.len() as u32) << 3 | 2 << 1 | u32::from(last);
            let mut block = header.to_le_bytes()[..3].to_vec();
            block.extend(body);
            block
        }
    }

    use handmade::Seq;

    fn rle_block(byte: u8, n: u32, last: bool) -> Vec<u8> {
        let header = n << 3 | 1 << 1 | u32::from(last);
        let mut b = header.to_le_bytes()[..3].to_vec();
        b.push(byte);
        b
    }

    fn raw_block(data: &[u8], last: bool) -> Vec<u8> {
        let header = (data.len() as u32) << 3 | u32::from(last);
        let mut b = header.to_le_bytes()[..3].to_vec();
        b.extend_from_slice(data);
        b
    }

    /// A frame with the checksum of `content` around hand-made `blocks` (none of them last).
    fn frame(blocks: &[u8], content: &[u8]) -> Vec<u8> {
        let mut f = ZSTD_MAGIC.to_vec();
        f.extend([CONTENT_CHECKSUM_FLAG, WINDOW_DESCRIPTOR]);
        f.extend_from_slice(blocks);
        f.extend(LAST_EMPTY_RAW_BLOCK);
        f.extend((xxh64(content, 0) as u32).to_le_bytes());
        f
    }

    fn lib_decode(frame: &[u8]) -> io::Result<Vec<u8>> {
        zstd::stream::decode_all(frame)
    }

    const ZSTD_CLI: &str = "/usr/bin/zstd";

    /// Decodes with the zstd command-line tool, which verifies the checksum; `None` without the tool.
    fn cli_decode(frame: &[u8]) -> Option<Result<Vec<u8>, String>> {
        if !Path::new(ZSTD_CLI).exists() {
            eprintln!("{ZSTD_CLI} is missing: the command-line decoder check is skipped");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frame.zst");
        std::fs::write(&path, frame).unwrap();
        let out = Command::new(ZSTD_CLI)
            .args(["-d", "-c", "-q"])
            .arg(&path)
            .output()
            .unwrap();
        Some(if out.status.success() {
            Ok(out.stdout)
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        })
    }

    fn assert_decodes(frame: &[u8], content: &[u8], what: &str) {
        let lib = lib_decode(frame).unwrap_or_else(|e| panic!("{what}: libzstd: {e}"));
        assert!(
            lib == content,
            "{what}: libzstd decodes {} bytes that differ from the content",
            lib.len()
        );
        if let Some(cli) = cli_decode(frame) {
            let cli = cli.unwrap_or_else(|e| panic!("{what}: zstd CLI: {e}"));
            assert!(
                cli == content,
                "{what}: the zstd CLI decodes {} bytes that differ",
                cli.len()
            );
        }
    }

    #[test]
    fn zsplice_rep_reset_block_is_the_hand_encoded_sequences() {
        let derived = handmade::compressed_block(
            &[],
            &[
                Seq {
                    ll: 0,
                    of_value: 8 + 3,
                    ml: 3,
                },
                Seq {
                    ll: 0,
                    of_value: 4 + 3,
                    ml: 3,
                },
                Seq {
                    ll: 0,
                    of_value: 1 + 3,
                    ml: 3,
                },
            ],
            false,
        );
        assert_eq!(derived, REP_RESET_BLOCK);
        assert_eq!(rep_reset_block(), &REP_RESET_BLOCK);
    }

    #[test]
    fn zsplice_rep_reset_block_decodes_to_zeros_after_eight_zeros() {
        for (preceding, blocks) in [
            (8, rle_block(0, 8, false)),
            (8, raw_block(&[0; 8], false)),
            (
                20,
                [raw_block(b"abcdefghijkl", false), rle_block(0, 8, false)].concat(),
            ),
        ] {
            let mut blocks = blocks;
            let mut content = if preceding == 20 {
                b"abcdefghijkl".to_vec()
            } else {
                Vec::new()
            };
            content.resize(preceding, 0);
            blocks.extend(REP_RESET_BLOCK);
            content.extend([0; REP_RESET_ZEROS]);
            assert_decodes(&frame(&blocks, &content), &content, "rep-reset after zeros");
            // Twice in a row: its own zeros satisfy the next one.
            blocks.extend(REP_RESET_BLOCK);
            content.extend([0; REP_RESET_ZEROS]);
            assert_decodes(&frame(&blocks, &content), &content, "two rep-resets");
        }
        // With fewer than 8 bytes before it, decoders must reject the offset 8.
        let short = [rle_block(0, 7, false), REP_RESET_BLOCK.to_vec()].concat();
        assert!(lib_decode(&frame(&short, &[0; 16])).is_err());
        if let Some(cli) = cli_decode(&frame(&short, &[0; 16])) {
            assert!(cli.is_err());
        }
        // With non-zero bytes before it, it copies them (offset 8: "123", offset 4: "812", offset 1: "222"):
        // the 8 zeros are a real requirement.
        let dirty = [raw_block(b"12345678", false), REP_RESET_BLOCK.to_vec()].concat();
        let out = lib_decode(&frame(&dirty, b"12345678123812222")).unwrap();
        assert_eq!(out, b"12345678123812222");
    }

    #[test]
    fn zsplice_rep_offsets_after_the_reset_are_1_4_8() {
        // A first block whose explicit offsets (1, then 6) leave repeat offsets {6, 1, 1}, ending in zeros.
        let first = handmade::compressed_block(
            b"ABCDEFGH\0",
            &[
                Seq {
                    ll: 9,
                    of_value: 1 + 3,
                    ml: 10,
                },
                Seq {
                    ll: 0,
                    of_value: 6 + 3,
                    ml: 3,
                },
            ],
            false,
        );
        let mut content = b"ABCDEFGH".to_vec();
        content.resize(8 + 14, 0);
        // A probe that copies with rep1 (literal length > 0, Offset_Value 1), then rep2, then rep3.
        let probe = handmade::compressed_block(
            b"pqrstabcdefgh",
            &[
                Seq {
                    ll: 1,
                    of_value: 1,
                    ml: 3,
                },
                Seq {
                    ll: 4,
                    of_value: 2,
                    ml: 4,
                },
                Seq {
                    ll: 8,
                    of_value: 3,
                    ml: 3,
                },
            ],
            false,
        );
        let probe_out: &[u8] = b"ppppqrstqrstabcdefghabc"; // offsets 1, 4, 8
        let mut expected = content.clone();
        expected.extend([0; REP_RESET_ZEROS]);
        expected.extend(probe_out);
        let spliced = [first.clone(), REP_RESET_BLOCK.to_vec(), probe.clone()].concat();
        assert_decodes(
            &frame(&spliced, &expected),
            &expected,
            "probe after the rep-reset block",
        );

        // Without the reset the same probe copies with offsets 6, then 1, then 1.
        let mut naive_expected = content.clone();
        naive_expected.extend(b"p\0\0\0qrstttttabcdefghhhh");
        let naive = [first, probe].concat();
        assert_eq!(
            lib_decode(&frame(&naive, &naive_expected)).unwrap(),
            naive_expected
        );
    }

    #[test]
    fn zsplice_xxh64_vectors() {
        let pattern = |n: usize| (0..n).map(|i| (i * 7 + 3) as u8).collect::<Vec<u8>>();
        let seed2 = 0x9E37_79B9_7F4A_7C15;
        // From the reference implementation (python-xxhash 3.x).
        let vectors: [(usize, u64, u64); 14] = [
            (0, 0xef46db3751d8e999, 0xc4349fc93c010000),
            (1, 0x1f25c8d0bc1f4bb6, 0x79826bcd749d267a),
            (3, 0x31d2363f52e564c9, 0x78efd77575e26575),
            (4, 0x9bb64b7d66ee9fda, 0x6f0a6c97d68bf353),
            (7, 0x9a7b149959ce60d8, 0xd97ede93c9d66a0d),
            (8, 0xdab99d95c6f90092, 0xa2f1e28437a78a1b),
            (15, 0x1b47cb8243cc8e32, 0xe2ec50a544faec61),
            (31, 0xa2aa5f33cc4a6119, 0x755437271d1d0a84),
            (32, 0x23c3c17ef790fd97, 0xbf624b932c090428),
            (33, 0x50a7cfc7ba588784, 0x7aceaf1e9d34ea35),
            (63, 0x5e3e54b431c7493c, 0x2c8ddce5c85d0d9d),
            (64, 0x0eb64b3ef6eeb01f, 0x4af341f14e3a6fc9),
            (100, 0xa61f8d4c170fe531, 0xf6d8f65c625abb4f),
            (1000, 0x5f235fa033f1a3fb, 0x442acd0a822e86f6),
        ];
        for (n, h0, h2) in vectors {
            let data = pattern(n);
            assert_eq!(xxh64(&data, 0), h0, "XXH64 of {n} bytes, seed 0");
            assert_eq!(xxh64(&data, seed2), h2, "XXH64 of {n} bytes, seed {seed2:#x}");
            // Streaming in uneven parts gives the same.
            for part in [1, 5, 31, 33] {
                let mut h = Xxh64::new(0);
                data.chunks(part).for_each(|c| h.update(c));
                assert_eq!(h.digest(), h0, "XXH64 of {n} bytes fed {part} at a time");
            }
        }
        assert_eq!(xxh64(b"abc", 0), 0x44bc2cf5ad770999);
        assert_eq!(
            xxh64(b"The quick brown fox jumps over the lazy dog", 0),
            0x0b242d361fda71bc
        );
    }

    /// SplitMix64.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    fn varint(v: u64, out: &mut Vec<u8>) {
        let mut groups = vec![(v & 0x7F) as u8];
        let mut v = v >> 7;
        while v > 0 {
            groups.push((v & 0x7F) as u8 | 0x80);
            v >>= 7;
        }
        out.extend(groups.iter().rev());
    }

    /// A SQLite-like table-leaf cell: a record of texts and integers with much repeated structure.
    fn cell(rng: &mut Rng, rowid: u64) -> Vec<u8> {
        let kinds = ["user", "group", "role", "app"];
        let kind = kinds[rng.below(kinds.len())];
        let id = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            rng.next() as u32,
            rng.below(1 << 16),
            rng.below(4096),
            rng.below(4096),
            rng.next() >> 16
        );
        let cols: Vec<Vec<u8>> = vec![
            format!("{kind}:{id}").into_bytes(),
            format!("{kind}-{rowid:06}").into_bytes(),
            format!("{kind}{rowid}@contoso.example.com").into_bytes(),
            format!(
                "{{\"type\":\"{kind}\",\"enabled\":{},\"department\":\"Dept {}\",\"parent\":\"{kind}-{:06}\"}}",
                rng.below(2) == 1,
                rng.below(12),
                rowid.saturating_sub(rng.below(40) as u64)
            )
            .into_bytes(),
        ];
        let number = rng.below(100_000) as u32;
        let mut header = Vec::new();
        for c in &cols {
            varint(13 + 2 * c.len() as u64, &mut header);
        }
        header.push(4); // 32-bit integer
        let mut payload = Vec::new();
        varint(header.len() as u64 + 1, &mut payload);
        payload.extend(&header);
        cols.iter().for_each(|c| payload.extend(c));
        payload.extend(number.to_be_bytes());
        let mut out = Vec::new();
        varint(payload.len() as u64, &mut out);
        varint(rowid, &mut out);
        out.extend(payload);
        out
    }

    const PAGE: usize = 64 * 1024;

    /// Pages like a SQLite database's: mostly table leaves (header and cell pointers at the start, cells
    /// at the end, zeros between), some freelist-trunk-like and integer-row pages (strides of 4 and 8
    /// bytes, which compressors cover with repeat offsets), random blobs and all-zero pages.
    fn sqlite_like(pages: usize, seed: u64) -> Vec<u8> {
        let mut rng = Rng(seed);
        let mut out = Vec::with_capacity(pages * PAGE);
        let mut rowid = 1u64;
        for _ in 0..pages {
            let mut page = vec![0u8; PAGE];
            match rng.below(20) {
                0 | 1 => page.iter_mut().for_each(|b| *b = rng.next() as u8),
                2 => {}
                3 | 4 => {
                    // A freelist trunk page: next trunk, a count, then ascending 4-byte page numbers.
                    let n = (PAGE / 4 - 2) * (30 + rng.below(60)) / 100;
                    let mut pgno = rng.below(1 << 20) as u32;
                    page[..4].copy_from_slice(&pgno.wrapping_add(7919).to_be_bytes());
                    page[4..8].copy_from_slice(&(n as u32).to_be_bytes());
                    for i in 0..n {
                        pgno += 1 + u32::from(rng.below(4) == 0);
                        page[8 + 4 * i..12 + 4 * i].copy_from_slice(&pgno.to_be_bytes());
                    }
                }
                5 | 6 => {
                    // Rows of 8-byte integers: ids, timestamps and counters.
                    let n = (PAGE / 24) * (30 + rng.below(60)) / 100;
                    let (mut id, mut ts) = (rng.next() >> 40, 1_700_000_000_000u64 + (rng.next() >> 44));
                    for i in 0..n {
                        id += 1 + rng.below(3) as u64;
                        ts += rng.below(1000) as u64;
                        page[24 * i..24 * i + 8].copy_from_slice(&id.to_be_bytes());
                        page[24 * i + 8..24 * i + 16].copy_from_slice(&ts.to_be_bytes());
                        page[24 * i + 16..24 * i + 24].copy_from_slice(&(rng.below(50) as u64).to_be_bytes());
                    }
                }
                _ => {
                    let fill = PAGE * (40 + rng.below(50)) / 100;
                    let mut start = PAGE;
                    let mut pointers = Vec::new();
                    while PAGE - start < fill {
                        let c = cell(&mut rng, rowid);
                        rowid += 1 + rng.below(3) as u64;
                        start -= c.len();
                        page[start..start + c.len()].copy_from_slice(&c);
                        pointers.push(start as u16);
                    }
                    page[0] = 0x0D;
                    page[3..5].copy_from_slice(&(pointers.len() as u16).to_be_bytes());
                    page[5..7].copy_from_slice(&(start as u16).to_be_bytes());
                    for (i, p) in pointers.iter().enumerate() {
                        page[8 + 2 * i..10 + 2 * i].copy_from_slice(&p.to_be_bytes());
                    }
                }
            }
            out.extend(page);
        }
        out
    }

    /// Piece boundaries at least `min_piece` apart, each inside a run of BOUNDARY_ZEROS zeros, at a
    /// varying place in the run.
    fn boundaries(data: &[u8], min_piece: usize, rng: &mut Rng) -> Vec<usize> {
        let mut out = Vec::new();
        let mut piece_start = 0;
        let mut i = 0;
        while i < data.len() {
            if data[i] != 0 {
                i += 1;
                continue;
            }
            let run_end = data[i..]
                .iter()
                .position(|&b| b != 0)
                .map_or(data.len(), |n| i + n);
            // b in [i + 8, run_end - 9], and b >= piece_start + min_piece.
            let lo = (i + REP_RESET_PRECEDING_ZEROS).max(piece_start + min_piece);
            if run_end >= BOUNDARY_ZEROS && lo + REP_RESET_ZEROS <= run_end {
                let b = lo + rng.below(run_end - REP_RESET_ZEROS - lo + 1);
                out.push(b);
                piece_start = b + REP_RESET_ZEROS;
                i = piece_start;
            } else {
                i = run_end;
            }
        }
        out
    }

    /// The pieces' content ranges: `[0, b1)`, `[b1 + 9, b2)`, ... (or contiguous with `gaps` false).
    fn ranges(len: usize, bounds: &[usize], gaps: bool) -> Vec<(usize, usize)> {
        let skip = if gaps { REP_RESET_ZEROS } else { 0 };
        let mut out = Vec::new();
        let mut start = 0;
        for &b in bounds {
            out.push((start, b));
            start = b + skip;
        }
        out.push((start, len));
        out
    }

    /// Compresses every range on its own, in a shuffled order, on two threads.
    fn compress_shuffled(data: &[u8], ranges: &[(usize, usize)], level: i32, rng: &mut Rng) -> Vec<Piece> {
        let mut order: Vec<usize> = (0..ranges.len()).collect();
        for i in (1..order.len()).rev() {
            order.swap(i, rng.below(i + 1));
        }
        let mut done: Vec<(usize, Piece)> = std::thread::scope(|s| {
            let halves: Vec<_> = order
                .chunks(order.len().div_ceil(2))
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .map(|&i| (i, compress_piece(&data[ranges[i].0..ranges[i].1], level).unwrap()))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
        });
        done.sort_by_key(|(i, _)| *i);
        done.into_iter().map(|(_, p)| p).collect()
    }

    fn assemble(data: &[u8], ranges: &[(usize, usize)], pieces: &[Piece], size: Option<u64>) -> Vec<u8> {
        let mut asm = FrameAssembler::new(Vec::new(), size).unwrap();
        for (p, &(s, e)) in pieces.iter().zip(ranges) {
            asm.push(p, &data[s..e]).unwrap();
        }
        assert_eq!(asm.content_len(), data.len() as u64);
        asm.finish().unwrap()
    }

    /// Concatenates the pieces' blocks with no rep-reset block between them.
    fn naive(data: &[u8], pieces: &[Piece]) -> Vec<u8> {
        frame(
            &pieces
                .iter()
                .flat_map(|p| p.blocks().iter().copied())
                .collect::<Vec<u8>>(),
            data,
        )
    }

    #[test]
    fn zsplice_pieces_compressed_out_of_order_assemble_into_one_frame() {
        let data = sqlite_like(40, 7);
        let mut rng = Rng(99);
        let (mut broken_total, mut boundaries_total, mut whole_broken) = (0, 0, Vec::new());
        for level in [1, 3] {
            for min_piece in [1, 20_000, 150_000, 700_000] {
                let what = format!("level {level}, pieces of at least {min_piece} bytes");
                let bounds = boundaries(&data, min_piece, &mut rng);
                assert!(!bounds.is_empty(), "{what}: no boundary");
                let r = ranges(data.len(), &bounds, true);
                let pieces = compress_shuffled(&data, &r, level, &mut rng);
                let size = if min_piece == 1 {
                    Some(data.len() as u64)
                } else {
                    None
                };
                let f = assemble(&data, &r, &pieces, size);
                assert_decodes(&f, &data, &what);
                let blocks: usize = pieces.iter().map(|p| p.blocks().len()).sum();
                assert_eq!(
                    f.len(),
                    blocks
                        + bounds.len() * REP_RESET_BLOCK.len()
                        + 6
                        + if size.is_some() { 4 } else { 0 }
                        + 3
                        + 4
                );

                // Negative control: the same cuts, contiguous pieces, and every two neighbours concatenated
                // without the reset.
                let r = ranges(data.len(), &bounds, false);
                let pieces = compress_shuffled(&data, &r, level, &mut rng);
                let whole = lib_decode(&naive(&data, &pieces)).is_ok_and(|out| out == data);
                let broken = (1..pieces.len())
                    .filter(|&i| {
                        let content = &data[r[i - 1].0..r[i].1];
                        lib_decode(&naive(content, &pieces[i - 1..=i])).is_ok_and(|out| out != content)
                            || lib_decode(&naive(content, &pieces[i - 1..=i])).is_err()
                    })
                    .count();
                eprintln!(
                    "{what}: {} pieces; without rep-reset blocks {broken} of {} boundaries break, the whole file {}",
                    pieces.len(),
                    bounds.len(),
                    if whole {
                        "decodes correctly"
                    } else {
                        "does not decode"
                    }
                );
                broken_total += broken;
                boundaries_total += bounds.len();
                if !whole {
                    whole_broken.push(level);
                }
            }
        }
        // A single boundary can come out right by luck (a piece that ends in zeros often leaves rep1 = 1, and
        // levels 1 and 3 seldom use rep2 and rep3 early in a piece), but every one of these files breaks.
        assert!(
            whole_broken.len() == 8,
            "the naive concatenation broke only for levels {whole_broken:?}"
        );
        eprintln!("{broken_total} of {boundaries_total} boundaries break on their own");
    }

    #[test]
    fn zsplice_edge_pieces() {
        let data = sqlite_like(6, 3);
        let zeros = vec![0u8; 40];
        // Content: a page, 40 zeros, another page; cut so that there are empty and tiny pieces.
        let mut content = data[..PAGE].to_vec();
        let z = content.len();
        content.extend(&zeros);
        content.extend(&data[2 * PAGE..3 * PAGE]);
        content.push(7);
        // Leaf pages end with a cell, so find this page's zero run for the first cut.
        let mut rng = Rng(5);
        let first = boundaries(&content[..PAGE], 1, &mut rng)[0];
        // z+8: the piece before it is the rest of the page plus 8 zeros; z+17: an empty piece; z+31: a piece
        // of 5 zeros (the 8 before the next boundary come partly from the rep-reset zeros).
        let bounds = [first, z + 8, z + 17, z + 31];
        let r = ranges(content.len(), &bounds, true);
        assert_eq!(r[2], (z + 17, z + 17));
        for level in [1, 3, 19] {
            let pieces: Vec<Piece> = r
                .iter()
                .map(|&(s, e)| compress_piece(&content[s..e], level).unwrap())
                .collect();
            assert!(pieces[2].blocks().is_empty());
            let f = assemble(&content, &r, &pieces, Some(content.len() as u64));
            assert_decodes(&f, &content, &format!("edge pieces, level {level}"));
        }
        // A single piece, and a frame with one empty piece only.
        let one = compress_piece(&content, 3).unwrap();
        assert_decodes(
            &assemble(&content, &[(0, content.len())], &[one], None),
            &content,
            "one piece",
        );
        let empty = compress_piece(&[], 3).unwrap();
        assert_decodes(&assemble(&[], &[(0, 0)], &[empty], Some(0)), &[], "empty");
    }

    #[test]
    fn zsplice_streaming_encoder_matches_the_contract() {
        let data = sqlite_like(8, 11);
        let mut rng = Rng(1);
        let bounds = boundaries(&data, 100_000, &mut rng);
        let r = ranges(data.len(), &bounds, true);
        let mut asm = FrameAssembler::new(Vec::new(), None).unwrap();
        for &(s, e) in &r {
            let mut enc = PieceEncoder::new(1, if s % 2 == 0 { Some((e - s) as u64) } else { None }).unwrap();
            for part in data[s..e].chunks(10_000) {
                enc.write_all(part).unwrap();
            }
            let piece = enc.finish().unwrap();
            asm.push_piece(&piece).unwrap();
            for part in data[s..e].chunks(777) {
                asm.content(part).unwrap();
            }
        }
        assert_decodes(&asm.finish().unwrap(), &data, "streamed pieces");
    }

    #[test]
    fn zsplice_assembler_enforces_the_contract() {
        let a = compress_piece(b"header and then zeros\0\0\0\0\0\0\0", 3).unwrap();
        let b = compress_piece(b"next", 3).unwrap();
        // Only 7 trailing zeros: the rep-reset block would copy non-zero bytes.
        let mut asm = FrameAssembler::new(Vec::new(), None).unwrap();
        asm.push(&a, b"header and then zeros\0\0\0\0\0\0\0").unwrap();
        let err = asm.push(&b, b"next").unwrap_err();
        assert!(err.to_string().contains("ends with 7 zero bytes"), "{err}");
        // Content of the wrong length.
        let mut asm = FrameAssembler::new(Vec::new(), None).unwrap();
        assert!(asm.push(&b, b"nex").is_err());
        asm.push_piece(&b).unwrap();
        asm.content(b"ne").unwrap();
        assert!(asm.content(b"xt!").is_err());
        assert!(asm.push_piece(&a).is_err());
        // A declared size that does not match.
        let mut asm = FrameAssembler::new(Vec::new(), Some(5)).unwrap();
        asm.push(&b, b"next").unwrap();
        assert!(asm.finish().is_err());
        // A content size over 4 GiB takes the 8-byte field.
        let asm = FrameAssembler::new(Vec::new(), Some(1 << 33)).unwrap();
        assert_eq!(asm.written(), 4 + 1 + 1 + 8);
    }

    #[test]
    fn zsplice_decoders_verify_the_checksum() {
        let data = sqlite_like(2, 4);
        let mut rng = Rng(2);
        let bounds = boundaries(&data, 1, &mut rng);
        let r = ranges(data.len(), &bounds, true);
        let pieces = compress_shuffled(&data, &r, 1, &mut rng);
        let mut f = assemble(&data, &r, &pieces, None);
        assert_decodes(&f, &data, "checksum control");
        let n = f.len();
        f[n - 1] ^= 1;
        assert!(lib_decode(&f).is_err(), "libzstd accepted a bad checksum");
        if let Some(cli) = cli_decode(&f) {
            assert!(cli.is_err(), "the zstd CLI accepted a bad checksum");
        }
    }

    /// (Literals_Block_Type, Symbol_Compression_Modes if there are sequences) of a compressed block.
    fn block_modes(body: &[u8]) -> (u8, Option<[u8; 3]>) {
        let lit_type = body[0] & 3;
        let size_format = (body[0] >> 2) & 3;
        let lit_len = |n: usize| {
            body[..n]
                .iter()
                .rev()
                .fold(0usize, |acc, &b| acc << 8 | b as usize)
        };
        let section = match lit_type {
            0 | 1 => {
                let (header, size) = match size_format {
                    0 | 2 => (1, (body[0] >> 3) as usize),
                    1 => (2, lit_len(2) >> 4),
                    _ => (3, lit_len(3) >> 4),
                };
                header + if lit_type == 0 { size } else { 1 }
            }
            _ => {
                let (header, bits) = match size_format {
                    0 | 1 => (3, 10),
                    2 => (4, 14),
                    _ => (5, 18),
                };
                header + (lit_len(header) >> (4 + bits) & ((1 << bits) - 1))
            }
        };
        let seq = &body[section..];
        let (nb_seq, n) = match seq[0] {
            0 => return (lit_type, None),
            b @ 1..=127 => (b as usize, 1),
            b @ 128..=254 => (((b as usize - 128) << 8) + seq[1] as usize, 2),
            _ => (seq[1] as usize + ((seq[2] as usize) << 8) + 0x7F00, 3),
        };
        assert!(nb_seq > 0);
        let m = seq[n];
        assert_eq!(m & 3, 0, "reserved bits");
        (lit_type, Some([m >> 6, (m >> 4) & 3, (m >> 2) & 3]))
    }

    #[test]
    fn zsplice_pieces_never_reuse_tables_from_before_them() {
        let data = sqlite_like(24, 21);
        let mut rng = Rng(8);
        let (mut treeless, mut repeats, mut first_blocks) = (0, 0, 0);
        for level in [-5, 1, 3, 6, 12, 19] {
            for min_piece in [1, 200_000] {
                let bounds = boundaries(&data, min_piece, &mut rng);
                let r = ranges(data.len(), &bounds, true);
                for (i, piece) in compress_shuffled(&data, &r, level, &mut rng).iter().enumerate() {
                    let (mut huffman, mut fse) = (false, [false; 3]);
                    let mut first = true;
                    let mut pos = 0;
                    let b = piece.blocks();
                    while pos < b.len() {
                        let header =
                            u32::from(b[pos]) | u32::from(b[pos + 1]) << 8 | u32::from(b[pos + 2]) << 16;
                        assert_eq!(header & 1, 0, "a last-block flag left in piece {i}");
                        let size = (header >> 3) as usize;
                        let body_len = if (header >> 1) & 3 == BLOCK_TYPE_RLE {
                            1
                        } else {
                            size
                        };
                        if (header >> 1) & 3 == BLOCK_TYPE_COMPRESSED {
                            let what = format!("level {level}, piece {i}, block at {pos}");
                            let (lit, modes) = block_modes(&b[pos + 3..pos + 3 + size]);
                            if first {
                                first_blocks += 1;
                                first = false;
                            }
                            match lit {
                                3 => {
                                    assert!(huffman, "{what}: Treeless literals before any Huffman tree");
                                    treeless += 1;
                                }
                                2 => huffman = true,
                                _ => {}
                            }
                            for (k, &mode) in modes.iter().flatten().enumerate() {
                                if mode == 3 {
                                    assert!(fse[k], "{what}: Repeat_Mode for stream {k} before any table");
                                    repeats += 1;
                                } else {
                                    fse[k] = true;
                                }
                            }
                        }
                        pos += 3 + body_len;
                    }
                    assert_eq!(pos, b.len());
                }
            }
        }
        eprintln!(
            "{first_blocks} pieces checked; later blocks reused {treeless} Huffman trees, {repeats} FSE tables"
        );
        // The check above is not vacuous: the compressor does reuse tables, within a piece.
        assert!(treeless > 0 && repeats > 0);
    }

    /// A frame whose last piece is compressed by [`FrameAssembler::into_tail`] as it is written, in one
    /// thread and with libzstd's workers: both decoders return the content and accept the checksum; a
    /// tail that misses a byte of the declared size is refused.
    #[test]
    fn zsplice_tail_written_as_a_stream_ends_the_frame() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        // 8 KiB of noise twice: the second copy (in the middle piece) compresses only with a prefix.
        let noise: Vec<u8> = (0..8192)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut content = Vec::new();
        for _ in 0..2 {
            content.extend_from_slice(&noise);
            content.extend_from_slice(&[0u8; 40]);
        }
        for i in 0..3000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let line = format!("row {i} of group-{:04} user-{:06};", x % 97, x % 100_003);
            content.extend_from_slice(line.as_bytes());
            if i % 700 == 350 {
                content.extend_from_slice(&[0u8; 40]);
            }
        }
        let zero_runs: Vec<usize> = (0..content.len() - 40)
            .filter(|&i| content[i..i + 40].iter().all(|&b| b == 0) && (i == 0 || content[i - 1] != 0))
            .map(|i| i + 20)
            .collect();
        assert!(zero_runs.len() >= 3);
        let (b1, b2) = (zero_runs[0], zero_runs[3]);
        for workers in [0, 2] {
            let mut asm = FrameAssembler::new(Vec::new(), Some(content.len() as u64)).unwrap();
            asm.push(&compress_piece(&content[..b1], 1).unwrap(), &content[..b1])
                .unwrap();
            let middle = &content[b1 + REP_RESET_ZEROS..b2];
            // With the content before it (its reset zeros included) as the prefix of its matches.
            let piece = compress_piece_after(middle, &content[..b1 + REP_RESET_ZEROS], 1).unwrap();
            assert!(
                piece.blocks().len() < compress_piece(middle, 1).unwrap().blocks().len(),
                "the prefix is used"
            );
            asm.push(&piece, middle).unwrap();
            let mut tail = asm.into_tail(1, workers, 1 << 20).unwrap();
            for part in content[b2 + REP_RESET_ZEROS..].chunks(1000) {
                tail.write_all(part).unwrap();
            }
            let frame = tail.finish().unwrap();
            assert_decodes(&frame, &content, &format!("tail with {workers} workers"));
        }
        let mut asm = FrameAssembler::new(Vec::new(), Some(content.len() as u64)).unwrap();
        asm.push(&compress_piece(&content[..b1], 1).unwrap(), &content[..b1])
            .unwrap();
        let mut tail = asm.into_tail(1, 0, 0).unwrap();
        tail.write_all(&content[b1 + REP_RESET_ZEROS..content.len() - 1])
            .unwrap();
        assert!(tail.finish().is_err(), "a short tail ends the frame");
    }
}
