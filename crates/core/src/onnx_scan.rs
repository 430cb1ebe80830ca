//! Reads the one thing engines need from an ONNX file beyond what their runtimes report: the
//! class keys of the `ZipMap` nodes that produce graph outputs (skl2onnx's default classifier
//! output, a sequence of maps from class to probability). Engines answer such an output as the
//! `[N, classes]` tensor of its values and report its classes with it.
//!
//! A protobuf walk over the file with no ONNX library: the model's graph field, its nodes and
//! outputs are read; everything else (initializers, whatever their size) is skipped by seeking.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use crate::engine::ClassLabels;

/// A node larger than this is not read: a `ZipMap` is a few hundred bytes, and a node this big
/// is a constant's data.
const MAX_NODE_BYTES: u64 = 16 << 20;

/// `(output name, class keys)` of every `ZipMap` (domain `ai.onnx.ml`) whose output is an output
/// of the main graph, in graph order.
pub fn zipmap_outputs(path: &Path) -> io::Result<Vec<(String, ClassLabels)>> {
    let mut r = BufReader::new(File::open(path)?);
    let end = r.seek(SeekFrom::End(0))?;
    r.seek(SeekFrom::Start(0))?;
    let mut found = Vec::new();
    let mut outputs = Vec::new();
    // ModelProto: graph = 7.
    while r.stream_position()? < end {
        let (field, wire) = tag(&mut r)?;
        if field == 7 && wire == 2 {
            let len = varint(&mut r)?;
            let stop = r.stream_position()? + len;
            graph(&mut r, stop, &mut found, &mut outputs)?;
            r.seek(SeekFrom::Start(stop))?;
        } else {
            skip(&mut r, wire)?;
        }
    }
    found.retain(|(name, _)| outputs.contains(name));
    Ok(found)
}

/// GraphProto: node = 1, output = 12.
fn graph<R: Read + Seek>(
    r: &mut R,
    stop: u64,
    found: &mut Vec<(String, ClassLabels)>,
    outputs: &mut Vec<String>,
) -> io::Result<()> {
    while r.stream_position()? < stop {
        let (field, wire) = tag(r)?;
        match (field, wire) {
            (1, 2) => {
                let len = varint(r)?;
                if len > MAX_NODE_BYTES {
                    r.seek(SeekFrom::Current(len as i64))?;
                    continue;
                }
                let bytes = read_bytes(r, len)?;
                if let Some(z) = zipmap(&bytes)? {
                    found.push(z);
                }
            }
            (12, 2) => {
                let len = varint(r)?;
                let bytes = read_bytes(r, len)?;
                // ValueInfoProto: name = 1.
                let mut name = None;
                for_each_field(&bytes, |f, v| {
                    if let (1, Value::Bytes(b)) = (f, v) {
                        name = Some(String::from_utf8_lossy(b).into_owned());
                    }
                })?;
                outputs.extend(name);
            }
            _ => skip(r, wire)?,
        }
    }
    Ok(())
}

/// NodeProto: output = 2, op_type = 4, attribute = 5, domain = 7. AttributeProto: name = 1,
/// ints = 8, strings = 9.
fn zipmap(node: &[u8]) -> io::Result<Option<(String, ClassLabels)>> {
    let mut op_type = Vec::new();
    let mut domain = Vec::new();
    let mut output = None;
    let mut attributes = Vec::new();
    for_each_field(node, |f, v| match (f, v) {
        (2, Value::Bytes(b)) if output.is_none() => output = Some(b.to_vec()),
        (4, Value::Bytes(b)) => op_type = b.to_vec(),
        (7, Value::Bytes(b)) => domain = b.to_vec(),
        (5, Value::Bytes(b)) => attributes.push(b.to_vec()),
        _ => {}
    })?;
    if op_type != b"ZipMap" || !(domain.is_empty() || domain == b"ai.onnx.ml") {
        return Ok(None);
    }
    let Some(output) = output else {
        return Ok(None);
    };
    let mut ints = Vec::new();
    let mut strings = Vec::new();
    for a in &attributes {
        let mut name = Vec::new();
        let mut a_ints = Vec::new();
        let mut a_strings = Vec::new();
        for_each_field(a, |f, v| match (f, v) {
            (1, Value::Bytes(b)) => name = b.to_vec(),
            (8, Value::Varint(i)) => a_ints.push(i as i64),
            (8, Value::Bytes(packed)) => {
                let mut p = packed;
                while !p.is_empty() {
                    match varint(&mut p) {
                        Ok(i) => a_ints.push(i as i64),
                        Err(_) => break,
                    }
                }
            }
            (9, Value::Bytes(b)) => a_strings.push(String::from_utf8_lossy(b).into_owned()),
            _ => {}
        })?;
        match name.as_slice() {
            b"classlabels_int64s" => ints = a_ints,
            b"classlabels_strings" => strings = a_strings,
            _ => {}
        }
    }
    let labels = if !ints.is_empty() {
        ClassLabels::Int(ints)
    } else if !strings.is_empty() {
        ClassLabels::Str(strings)
    } else {
        return Ok(None);
    };
    Ok(Some((
        String::from_utf8_lossy(&output).into_owned(),
        labels,
    )))
}

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

fn for_each_field(mut buf: &[u8], mut f: impl FnMut(u64, Value<'_>)) -> io::Result<()> {
    while !buf.is_empty() {
        let (field, wire) = tag(&mut buf)?;
        match wire {
            0 => f(field, Value::Varint(varint(&mut buf)?)),
            2 => {
                let len = usize::try_from(varint(&mut buf)?).map_err(|_| malformed())?;
                if len > buf.len() {
                    return Err(malformed());
                }
                let (value, rest) = buf.split_at(len);
                f(field, Value::Bytes(value));
                buf = rest;
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if n > buf.len() {
                    return Err(malformed());
                }
                f(field, Value::Other);
                buf = &buf[n..];
            }
            _ => return Err(malformed()),
        }
    }
    Ok(())
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "not an ONNX protobuf file")
}

fn tag<R: Read>(r: &mut R) -> io::Result<(u64, u64)> {
    let t = varint(r)?;
    Ok((t >> 3, t & 7))
}

fn varint<R: Read>(r: &mut R) -> io::Result<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let mut b = [0u8];
        r.read_exact(&mut b)?;
        value |= u64::from(b[0] & 0x7f) << shift;
        if b[0] & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(malformed())
}

fn read_bytes<R: Read>(r: &mut R, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    r.by_ref().take(len).read_to_end(&mut buf)?;
    if buf.len() as u64 != len {
        return Err(malformed());
    }
    Ok(buf)
}

fn skip<R: Read + Seek>(r: &mut R, wire: u64) -> io::Result<()> {
    match wire {
        0 => varint(r).map(|_| ()),
        1 => r.seek(SeekFrom::Current(8)).map(|_| ()),
        2 => {
            let len = varint(r)?;
            let len = i64::try_from(len).map_err(|_| malformed())?;
            r.seek(SeekFrom::Current(len)).map(|_| ())
        }
        5 => r.seek(SeekFrom::Current(4)).map(|_| ()),
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        put_varint(&mut out, (n << 3) | 2);
        put_varint(&mut out, bytes.len() as u64);
        out.extend_from_slice(bytes);
        out
    }

    fn put_varint(out: &mut Vec<u8>, mut v: u64) {
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return;
            }
            out.push(b | 0x80);
        }
    }

    #[test]
    fn finds_the_keys_of_a_zipmap_that_is_a_graph_output() {
        let mut attr = field(1, b"classlabels_int64s");
        let mut packed = Vec::new();
        for v in [0u64, 7, 300] {
            put_varint(&mut packed, v);
        }
        attr.extend(field(8, &packed));
        let mut node = field(1, b"probs");
        node.extend(field(2, b"out"));
        node.extend(field(4, b"ZipMap"));
        node.extend(field(7, b"ai.onnx.ml"));
        node.extend(field(5, &attr));
        let mut other = field(2, b"hidden");
        other.extend(field(4, b"ZipMap"));
        other.extend(field(5, &{
            let mut a = field(1, b"classlabels_strings");
            a.extend(field(9, b"x"));
            a
        }));
        let mut graph = field(1, &node);
        graph.extend(field(1, &other));
        graph.extend(field(5, &[0u8; 64]));
        graph.extend(field(12, &field(1, b"out")));
        let model = field(7, &graph);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, &model).unwrap();
        assert_eq!(
            zipmap_outputs(&path).unwrap(),
            vec![("out".to_string(), ClassLabels::Int(vec![0, 7, 300]))]
        );
        std::fs::write(&path, b"\x3a\xff\xff").unwrap();
        assert!(zipmap_outputs(&path).is_err());
    }
}
