//! Reading files whose size the server does not control (model configs, warm-up requests, the
//! deployment state) under a limit, so that a wrong path or a hostile file cannot size an
//! allocation: the length is checked before the read, and the read itself stops past the limit
//! in case the file grows meanwhile. Files a client names ([`read_regular`]) must also be
//! regular files, so a device or a FIFO can neither stream forever nor block the reader.

use std::fs::File;
use std::io::Read;
use std::path::Path;

/// Why a bounded read failed.
#[derive(Debug, thiserror::Error)]
pub enum BoundedReadError {
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error("is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
}

/// Reads the whole file if it holds at most `limit` bytes.
pub fn read(path: &Path, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    let file = File::open(path)?;
    let declared = file.metadata()?.len();
    read_open(file, declared, limit)
}

/// As [`read`], for a path a client named (a training config a model's `config.toml` points
/// to): anything but a regular file — `/dev/zero`, a FIFO, a directory — is refused before a
/// byte is read. It is checked before opening (opening some devices acts on them) and again on
/// the opened file (the path may change in between), and the open never blocks (`O_NONBLOCK`:
/// a FIFO without a writer would hold the thread).
pub fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    if !std::fs::metadata(path)?.is_file() {
        return Err(not_regular());
    }
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(not_regular());
    }
    read_open(file, meta.len(), limit)
}

/// As [`read_regular`], for UTF-8 text.
pub fn read_regular_to_string(path: &Path, limit: u64) -> Result<String, BoundedReadError> {
    utf8(read_regular(path, limit)?)
}

fn not_regular() -> BoundedReadError {
    BoundedReadError::Io(std::io::Error::new(
        std::io::ErrorKind::InvalidInput,
        "is not a regular file",
    ))
}

fn read_open(file: File, declared: u64, limit: u64) -> Result<Vec<u8>, BoundedReadError> {
    if declared > limit {
        return Err(BoundedReadError::TooLarge { limit });
    }
    let mut out = Vec::with_capacity(declared as usize);
    file.take(limit + 1).read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(BoundedReadError::TooLarge { limit });
    }
    Ok(out)
}

/// As [`read`], for UTF-8 text.
pub fn read_to_string(path: &Path, limit: u64) -> Result<String, BoundedReadError> {
    utf8(read(path, limit)?)
}

fn utf8(bytes: Vec<u8>) -> Result<String, BoundedReadError> {
    String::from_utf8(bytes)
        .map_err(|e| BoundedReadError::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_files_over_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read(&path, 5).unwrap(), b"12345");
        assert!(matches!(
            read(&path, 4),
            Err(BoundedReadError::TooLarge { limit: 4 })
        ));
        assert!(matches!(
            read(&dir.path().join("missing"), 4),
            Err(BoundedReadError::Io(_))
        ));
    }

    #[test]
    fn only_regular_files_are_read_when_a_client_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_regular(&path, 5).unwrap(), b"12345");
        assert!(matches!(
            read_regular(&path, 4),
            Err(BoundedReadError::TooLarge { limit: 4 })
        ));
        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .is_ok_and(|s| s.success());
        let started = std::time::Instant::now();
        let mut refused = vec![Path::new("/dev/zero"), dir.path()];
        if made {
            refused.push(&fifo);
        }
        for path in refused {
            let err = read_regular(path, 1 << 20).unwrap_err().to_string();
            assert!(
                err.contains("not a regular file"),
                "{}: {err}",
                path.display()
            );
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
