//! Reading a regular file up to the size it had when it was opened.
//!
//! A file that grows during the read (a log still being written) is read up to its size at
//! open, so every run and every worker count reads the same lines. A file that shrinks before
//! the reader reaches that size ends with a read error, which the reader reports as damaged
//! input, instead of a short read that looks like a complete file.

use std::fs::File;
use std::io::{self, Read};

/// A byte range of an opened regular file, read as if the file kept the size it had at open.
pub struct SizedFile {
    file: File,
    /// Offset of the next byte to read.
    position: u64,
    /// Offset where the read ends: the file's size at open, or the end of a range of it.
    end: u64,
    /// The file's size when it was opened, or, for a range, when the ranges were planned.
    opened_size: u64,
}

impl SizedFile {
    /// Reads `file` from its current offset `start` up to `end`, an offset within
    /// `opened_size`, the size the file had when it was opened.
    pub fn new(file: File, start: u64, end: u64, opened_size: u64) -> SizedFile {
        SizedFile {
            file,
            position: start,
            end: end.max(start),
            opened_size,
        }
    }

    /// Reads the whole of `file`, which must be at offset 0, up to its size now.
    pub fn whole(file: File) -> io::Result<SizedFile> {
        let size = file.metadata()?.len();
        Ok(SizedFile::new(file, 0, size, size))
    }

    /// Returns the error of a read that found the end of the file at `self.position`, before
    /// `self.end`. The reader may have read past the file's new end before it shrank, so the
    /// message gives the new size apart from the position.
    fn shrank_error(&self) -> io::Error {
        let now = match self.file.metadata() {
            Ok(metadata) => format!("{} bytes now", metadata.len()),
            Err(error) => format!(
                "at most {} bytes now (its size could not be read: {error})",
                self.position
            ),
        };
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!(
                "the file shrank while it was read: it had {} bytes when it was opened and has \
                 {now}, and the reader had read it up to byte {}",
                self.opened_size, self.position
            ),
        )
    }
}

impl Read for SizedFile {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let left = self.end - self.position;
        if left == 0 || buffer.is_empty() {
            return Ok(0);
        }
        let requested = buffer
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        let read = self.file.read(&mut buffer[..requested])?;
        if read == 0 {
            return Err(self.shrank_error());
        }
        self.position += read as u64;
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Seek, SeekFrom, Write};

    use super::*;

    #[test]
    fn growth_after_open_is_not_read() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"one\ntwo\n").unwrap();
        let mut reader = SizedFile::whole(File::open(file.path()).unwrap()).unwrap();
        file.write_all(b"three\n").unwrap();

        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "one\ntwo\n");
    }

    #[test]
    fn shrink_after_open_is_read_error() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"one\ntwo\nthree\n").unwrap();
        let mut reader = SizedFile::whole(File::open(file.path()).unwrap()).unwrap();
        file.as_file().set_len(5).unwrap();

        let mut text = Vec::new();
        let error = reader.read_to_end(&mut text).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(text, b"one\nt");
        let message = error.to_string();
        assert!(
            message.contains("had 14 bytes when it was opened"),
            "{message}"
        );
        assert!(message.contains("has 5 bytes now"), "{message}");
        assert!(message.contains("read it up to byte 5"), "{message}");
    }

    #[test]
    fn shrink_behind_reader_gives_new_size() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"one\ntwo\nthree\n").unwrap();
        let mut reader = SizedFile::whole(File::open(file.path()).unwrap()).unwrap();
        let mut start = [0u8; 9];
        reader.read_exact(&mut start).unwrap();
        file.as_file().set_len(5).unwrap();

        let error = reader.read(&mut [0u8; 16]).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
        let message = error.to_string();
        assert!(
            message.contains("had 14 bytes when it was opened"),
            "{message}"
        );
        assert!(message.contains("has 5 bytes now"), "{message}");
        assert!(message.contains("read it up to byte 9"), "{message}");
    }

    #[test]
    fn range_ends_at_its_end() {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(b"one\ntwo\nthree\n").unwrap();
        let mut opened = File::open(file.path()).unwrap();
        opened.seek(SeekFrom::Start(4)).unwrap();
        let mut reader = SizedFile::new(opened, 4, 8, 14);

        let mut text = String::new();
        reader.read_to_string(&mut text).unwrap();
        assert_eq!(text, "two\n");
    }
}
