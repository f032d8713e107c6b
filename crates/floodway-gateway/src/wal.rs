//! The write-ahead log in front of the embedded store.
//!
//! Why by hand: a `202` waits for a synced write, so the latency of one sync decides how many
//! requests a connection can make. A redb commit writes several scattered pages and, when the file
//! grows, its metadata; one synced commit took about 1.3 ms on the project's disk, where one write
//! and `fdatasync` into a file whose blocks already exist took 0.47 ms (BENCHMARKS.md). No storage
//! crate offers "one preallocated file, overwritten in place, one write and one sync per group", so
//! this file does exactly that and nothing else; redb stays the store of record.
//!
//! Layout: a file of fixed size, written full of zeros once when created, so later writes never
//! allocate blocks. Two header slots (pages 0 and 1) hold the current generation; the slot written
//! last is the one with the higher valid generation. Records start at page 2, each
//! `[generation u64][length u32][crc32 u32][payload]`, the checksum covering generation, length and
//! payload. Recovery reads records of the current generation until the first one that is torn,
//! stale (an older generation, left from before a reset) or past the end.
//!
//! A checkpoint (the store made durable up to now) ends a generation: [`Wal::reset`] writes the
//! next generation into the other slot and syncs, and writing starts again at page 2. Should that
//! write or sync fail, the new generation is in force all the same and its header is written again
//! with the next record, so one sync makes both durable: a record is never synced under a header
//! of another generation. (Otherwise a header that reached the disk later, with some other sync,
//! would make the records written after it stale.)

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

const PAGE: u64 = 4096;
const MAGIC: &[u8; 8] = b"FLWAL001";
const RECORD_HEADER: u64 = 16;

/// The log: one file, written sequentially within a generation.
pub struct Wal {
    file: File,
    size: u64,
    generation: u64,
    offset: u64,
    /// The current generation's header may not be on disk (a reset's write or sync failed).
    header_dirty: bool,
    buf: Vec<u8>,
    /// Makes the next sync of a record fail, for tests of that path.
    #[cfg(test)]
    fail_next_sync: bool,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("size", &self.size)
            .field("generation", &self.generation)
            .field("offset", &self.offset)
            .finish()
    }
}

impl Wal {
    /// Opens the log at `path` (creating it `size` bytes long if it does not exist) and returns it
    /// with the payloads of the current generation's records, oldest first.
    ///
    /// A log that was opened with records takes no more until [`reset`](Self::reset): the caller
    /// stores what was recovered durably first. (Appending after a torn record could otherwise line
    /// up with an older record of the same generation further on and bring it back.)
    pub fn open(path: &Path, size: u64) -> io::Result<(Wal, Vec<Vec<u8>>)> {
        let size = size.max(4 * PAGE);
        let existing = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if !existing || len < 4 * PAGE {
            Self::fill(&file, 0, size)?;
            let mut wal = Wal {
                file,
                size,
                generation: 0,
                offset: 2 * PAGE,
                header_dirty: false,
                buf: Vec::new(),
                #[cfg(test)]
                fail_next_sync: false,
            };
            wal.reset()?;
            if let Some(dir) = path.parent() {
                // The file's name must survive a crash too.
                File::open(dir)?.sync_all()?;
            }
            return Ok((wal, Vec::new()));
        }
        let generation = (0..2)
            .filter_map(|slot| Self::read_header(&file, slot))
            .max()
            .unwrap_or(0);
        let mut wal = Wal {
            file,
            size: len,
            generation,
            offset: 2 * PAGE,
            header_dirty: false,
            buf: Vec::new(),
            #[cfg(test)]
            fail_next_sync: false,
        };
        let records = wal.scan()?;
        if len < size {
            // A log made smaller than asked for now grows, after its records were read.
            Self::fill(&wal.file, len, size)?;
            wal.size = size;
        }
        wal.offset = wal.size;
        Ok((wal, records))
    }

    /// Zero-fills the file from `from` to `to` and syncs it, so that later writes only overwrite.
    fn fill(file: &File, from: u64, to: u64) -> io::Result<()> {
        let chunk = vec![0u8; 1 << 20];
        let mut at = from;
        while at < to {
            let n = (to - at).min(chunk.len() as u64) as usize;
            file.write_all_at(&chunk[..n], at)?;
            at += n as u64;
        }
        file.sync_all()
    }

    fn read_header(file: &File, slot: u64) -> Option<u64> {
        let mut h = [0u8; 20];
        file.read_exact_at(&mut h, slot * PAGE).ok()?;
        if &h[..8] != MAGIC {
            return None;
        }
        let crc = u32::from_le_bytes(h[16..20].try_into().ok()?);
        (crc32fast::hash(&h[..16]) == crc).then(|| u64::from_le_bytes(h[8..16].try_into().unwrap()))
    }

    /// Reads the records of the current generation.
    fn scan(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut out = Vec::new();
        let mut at = 2 * PAGE;
        let mut head = [0u8; RECORD_HEADER as usize];
        while at + RECORD_HEADER <= self.size {
            self.file.read_exact_at(&mut head, at)?;
            let generation = u64::from_le_bytes(head[..8].try_into().unwrap());
            let len = u64::from(u32::from_le_bytes(head[8..12].try_into().unwrap()));
            let crc = u32::from_le_bytes(head[12..16].try_into().unwrap());
            if generation != self.generation || at + RECORD_HEADER + len > self.size {
                break;
            }
            let mut payload = vec![0u8; len as usize];
            self.file.read_exact_at(&mut payload, at + RECORD_HEADER)?;
            let mut h = crc32fast::Hasher::new();
            h.update(&head[..12]);
            h.update(&payload);
            if h.finalize() != crc {
                break;
            }
            out.push(payload);
            at += RECORD_HEADER + len;
        }
        Ok(out)
    }

    /// The payloads of the current generation's records, oldest first.
    pub fn records(&self) -> io::Result<Vec<Vec<u8>>> {
        self.scan()
    }

    /// Whether a payload of `len` bytes fits in what is left of this generation.
    pub fn fits(&self, len: usize) -> bool {
        self.offset + RECORD_HEADER + len as u64 <= self.size
    }

    /// How full this generation is, from 0 to 1.
    pub fn fill_ratio(&self) -> f64 {
        (self.offset - 2 * PAGE) as f64 / (self.size - 2 * PAGE) as f64
    }

    /// Appends one record and, with `sync`, waits until it is on disk. The caller checks
    /// [`fits`](Self::fits) first.
    pub fn append(&mut self, payload: &[u8], sync: bool) -> io::Result<()> {
        if !self.fits(payload.len()) {
            return Err(io::Error::other("the write-ahead log is full"));
        }
        let len = u32::try_from(payload.len()).map_err(io::Error::other)?;
        self.buf.clear();
        self.buf.extend_from_slice(&self.generation.to_le_bytes());
        self.buf.extend_from_slice(&len.to_le_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&self.buf);
        h.update(payload);
        self.buf.extend_from_slice(&h.finalize().to_le_bytes());
        self.buf.extend_from_slice(payload);
        if self.header_dirty {
            self.write_header()?;
        }
        self.file.write_all_at(&self.buf, self.offset)?;
        if sync {
            if let Err(e) = self.sync_record() {
                // The record may be whole in the page cache, where a scan (the store's reload
                // after this failure) would take it back although its writer is told it failed.
                // Blank its header: the next record goes to the same place anyway.
                let blank = [0u8; RECORD_HEADER as usize];
                let _ = self.file.write_all_at(&blank, self.offset);
                return Err(e);
            }
        }
        self.header_dirty = false;
        self.offset += self.buf.len() as u64;
        Ok(())
    }

    fn sync_record(&mut self) -> io::Result<()> {
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_sync) {
            return Err(io::Error::other("sync failed (injected)"));
        }
        self.file.sync_data()
    }

    /// Starts the next generation: everything logged so far is no longer needed (the caller made
    /// the store durable first). The generation is taken even when this fails: its header is then
    /// written again with the next record.
    pub fn reset(&mut self) -> io::Result<()> {
        self.generation += 1;
        self.offset = 2 * PAGE;
        self.header_dirty = true;
        self.write_header()?;
        self.file.sync_data()?;
        self.header_dirty = false;
        Ok(())
    }

    /// Where the current generation's header lives: one slot per parity.
    fn header_at(&self) -> u64 {
        (self.generation % 2) * PAGE
    }

    /// Writes the current generation's header into its slot.
    fn write_header(&self) -> io::Result<()> {
        let mut h = [0u8; 20];
        h[..8].copy_from_slice(MAGIC);
        h[8..16].copy_from_slice(&self.generation.to_le_bytes());
        let crc = crc32fast::hash(&h[..16]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        self.file.write_all_at(&h, self.header_at())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 64 * 1024;

    /// A record whose sync failed is not taken back by a scan, although its bytes were written
    /// (the store's reload after the failure scans the log, and the writer was told it failed).
    #[test]
    fn a_record_whose_sync_failed_is_not_recovered() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut wal, _) = Wal::open(&path, SIZE).unwrap();
        wal.append(b"kept", true).unwrap();
        wal.fail_next_sync = true;
        assert!(wal.append(b"refused", true).is_err());
        assert_eq!(wal.records().unwrap(), vec![b"kept".to_vec()]);
        // The next record takes its place.
        wal.append(b"next", true).unwrap();
        drop(wal);
        let (_, got) = Wal::open(&path, SIZE).unwrap();
        assert_eq!(got, vec![b"kept".to_vec(), b"next".to_vec()]);
    }

    #[test]
    fn records_come_back_after_reopen_and_go_after_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        {
            let (mut wal, old) = Wal::open(&path, SIZE).unwrap();
            assert!(old.is_empty());
            wal.append(b"one", true).unwrap();
            wal.append(b"two", false).unwrap();
        }
        let (mut wal, got) = Wal::open(&path, SIZE).unwrap();
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
        // Nothing is taken until the recovered records are stored elsewhere and the log reset.
        assert!(wal.append(b"three", true).is_err());
        drop(wal);
        let (mut wal, got) = Wal::open(&path, SIZE).unwrap();
        assert_eq!(got.len(), 2);
        // After a reset the old records are stale, even where the new generation is shorter.
        wal.reset().unwrap();
        wal.append(b"4", true).unwrap();
        drop(wal);
        let (wal, got) = Wal::open(&path, SIZE).unwrap();
        assert_eq!(got, vec![b"4".to_vec()]);
        assert_eq!(wal.generation, 2);
    }

    #[test]
    fn a_torn_record_ends_recovery_and_a_torn_header_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut wal, _) = Wal::open(&path, SIZE).unwrap();
        wal.append(b"kept", true).unwrap();
        let torn_at = wal.offset;
        wal.append(b"torn record", true).unwrap();
        wal.append(b"after", true).unwrap();
        // Corrupt one payload byte of the second record.
        wal.file
            .write_all_at(b"X", torn_at + RECORD_HEADER + 2)
            .unwrap();
        drop(wal);
        let (mut wal, got) = Wal::open(&path, SIZE).unwrap();
        assert_eq!(got, vec![b"kept".to_vec()]);
        // A reset whose header write was torn leaves the previous generation in force.
        let generation = wal.generation;
        wal.reset().unwrap();
        wal.file
            .write_all_at(b"garbage", wal.header_at() + 9)
            .unwrap();
        drop(wal);
        let (wal, got) = Wal::open(&path, SIZE).unwrap();
        assert_eq!(wal.generation, generation);
        assert_eq!(got, vec![b"kept".to_vec()]);
    }

    /// A reset whose header did not reach the disk (its write or sync failed): the next record
    /// writes the header again, so the record comes back after a reopen instead of being taken
    /// for a stale one under the previous generation's header.
    #[test]
    fn a_reset_that_failed_is_completed_by_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut wal, _) = Wal::open(&path, SIZE).unwrap();
        wal.append(b"before", true).unwrap();
        let kept = wal.generation;
        wal.reset().unwrap();
        // As if the reset's header never landed: its slot holds zeros, and the log knows it.
        wal.file.write_all_at(&[0u8; 20], wal.header_at()).unwrap();
        wal.header_dirty = true;
        assert_eq!(Wal::read_header(&wal.file, wal.generation % 2), None);
        wal.append(b"after", true).unwrap();
        let generation = wal.generation;
        drop(wal);
        let (wal, got) = Wal::open(&path, SIZE).unwrap();
        assert_eq!(wal.generation, generation);
        assert_ne!(generation, kept);
        assert_eq!(got, vec![b"after".to_vec()]);
    }

    #[test]
    fn a_larger_size_grows_the_log_after_its_records_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut wal, _) = Wal::open(&path, SIZE).unwrap();
        wal.append(b"kept", true).unwrap();
        drop(wal);
        let (mut wal, got) = Wal::open(&path, 2 * SIZE).unwrap();
        assert_eq!(got, vec![b"kept".to_vec()]);
        assert_eq!(wal.file.metadata().unwrap().len(), 2 * SIZE);
        wal.reset().unwrap();
        let fits = vec![7u8; (2 * SIZE - 2 * PAGE - RECORD_HEADER) as usize];
        wal.append(&fits, true).unwrap();
    }

    #[test]
    fn a_record_that_does_not_fit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(&dir.path().join("log"), SIZE).unwrap();
        let big = vec![7u8; (SIZE - 2 * PAGE) as usize];
        assert!(!wal.fits(big.len()));
        assert!(wal.append(&big, true).is_err());
        let fits = vec![7u8; (SIZE - 2 * PAGE - RECORD_HEADER) as usize];
        wal.append(&fits, true).unwrap();
        assert!((wal.fill_ratio() - 1.0).abs() < 1e-9);
    }
}
