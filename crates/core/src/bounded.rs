//! Reading files whose size the server does not control (model configs, warm-up requests, the
//! deployment state) under a limit, so that a wrong path or a hostile file cannot size an
//! allocation: the length is checked before the read, and the read itself stops past the limit
//! in case the file grows meanwhile.

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
    let file = std::fs::File::open(path)?;
    let declared = file.metadata()?.len();
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
    let bytes = read(path, limit)?;
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
}
