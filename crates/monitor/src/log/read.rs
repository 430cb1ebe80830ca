//! Reading a log directory back: sealed Parquet segments and the open IPC stream, in time order,
//! with a torn tail (the last message of a segment cut by a crash) skipped, never fatal.

use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::LogError;

/// What a read found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadReport {
    pub segments: usize,
    pub rows: usize,
    /// Segments whose last message was torn and skipped.
    pub torn_tails: usize,
}

/// Every complete batch in `dir`, oldest segment first. Blocking.
pub fn read_dir(dir: &Path) -> Result<(Vec<RecordBatch>, ReadReport), LogError> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| LogError::Io {
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("parquet" | "arrows")
            )
        })
        .collect();
    paths.sort();
    // A segment being sealed is there twice for a moment: its Parquet copy holds the same rows.
    let sealed: std::collections::HashSet<PathBuf> = paths
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .cloned()
        .collect();
    paths.retain(|p| {
        p.extension().is_some_and(|e| e == "parquet")
            || !sealed.contains(&p.with_extension("parquet"))
    });
    let mut batches = Vec::new();
    let mut report = ReadReport::default();
    for path in paths {
        let (mut found, torn) = match path.extension().and_then(|e| e.to_str()) {
            Some("parquet") => match read_parquet(&path) {
                Ok(batches) => (batches, false),
                // Deleted by retention between the listing and the read.
                Err(LogError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue
                }
                Err(e) => return Err(e),
            },
            _ => match read_stream(&path) {
                Ok(read) => read,
                // Sealed and removed between the listing and the read: its rows are in its
                // Parquet copy now.
                Err(LogError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    match read_parquet(&path.with_extension("parquet")) {
                        Ok(batches) => (batches, false),
                        Err(_) => continue,
                    }
                }
                Err(e) => return Err(e),
            },
        };
        report.segments += 1;
        report.rows += found.iter().map(RecordBatch::num_rows).sum::<usize>();
        if torn {
            report.torn_tails += 1;
            tracing::warn!(segment = %path.display(), "prediction log: torn tail skipped while reading");
        }
        batches.append(&mut found);
    }
    Ok((batches, report))
}

/// The complete batches of an Arrow IPC stream, and whether its tail was torn.
pub(super) fn read_stream(path: &Path) -> Result<(Vec<RecordBatch>, bool), LogError> {
    let file = File::open(path).map_err(|source| LogError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = match StreamReader::try_new(BufReader::new(file), None) {
        Ok(reader) => reader,
        // Not even the schema message is whole: the segment was created just before a crash.
        Err(_) => return Ok((Vec::new(), true)),
    };
    let mut batches = Vec::new();
    for item in reader {
        match item {
            Ok(batch) => batches.push(batch),
            Err(_) => return Ok((batches, true)),
        }
    }
    Ok((batches, false))
}

fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>, LogError> {
    let parquet = |source| LogError::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(|source| LogError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(parquet)?
        .build()
        .map_err(parquet)?;
    reader
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| LogError::Arrow {
            path: path.to_path_buf(),
            source,
        })
}
