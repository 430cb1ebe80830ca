//! Host tensors as every layer below the wire sees them: a datatype, a shape and the elements.
//!
//! Fixed-size elements are kept as one little-endian byte buffer (`bytes::Bytes`), which is the
//! V2 binary layout itself: a binary request's tensor is a slice of the request body, and a batch
//! output is split per request by slicing, never by copying. This module knows nothing of JSON,
//! HTTP or any engine.

use std::fmt;

use bytes::Bytes;

/// The V2 datatypes. Names on the wire are the V2 ones (`FP32`); Triton configs use `TYPE_FP32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DataType {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Bf16,
    Fp32,
    Fp64,
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::Uint8,
        DataType::Uint16,
        DataType::Uint32,
        DataType::Uint64,
        DataType::Int8,
        DataType::Int16,
        DataType::Int32,
        DataType::Int64,
        DataType::Fp16,
        DataType::Bf16,
        DataType::Fp32,
        DataType::Fp64,
        DataType::Bytes,
    ];

    /// The V2 protocol name.
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::Uint8 => "UINT8",
            DataType::Uint16 => "UINT16",
            DataType::Uint32 => "UINT32",
            DataType::Uint64 => "UINT64",
            DataType::Int8 => "INT8",
            DataType::Int16 => "INT16",
            DataType::Int32 => "INT32",
            DataType::Int64 => "INT64",
            DataType::Fp16 => "FP16",
            DataType::Bf16 => "BF16",
            DataType::Fp32 => "FP32",
            DataType::Fp64 => "FP64",
            DataType::Bytes => "BYTES",
        }
    }

    /// The Triton model-configuration name (`TYPE_FP32`, `TYPE_STRING` for BYTES).
    pub fn triton_config_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::Uint8 => "TYPE_UINT8",
            DataType::Uint16 => "TYPE_UINT16",
            DataType::Uint32 => "TYPE_UINT32",
            DataType::Uint64 => "TYPE_UINT64",
            DataType::Int8 => "TYPE_INT8",
            DataType::Int16 => "TYPE_INT16",
            DataType::Int32 => "TYPE_INT32",
            DataType::Int64 => "TYPE_INT64",
            DataType::Fp16 => "TYPE_FP16",
            DataType::Bf16 => "TYPE_BF16",
            DataType::Fp32 => "TYPE_FP32",
            DataType::Fp64 => "TYPE_FP64",
            DataType::Bytes => "TYPE_STRING",
        }
    }

    /// Parses a V2 name (`FP32`) or a Triton config name (`TYPE_FP32`, `TYPE_STRING`).
    pub fn parse(name: &str) -> Option<DataType> {
        Self::ALL
            .into_iter()
            .find(|dt| dt.as_str() == name || dt.triton_config_name() == name)
    }

    /// Bytes per element, or `None` for BYTES, whose elements vary in length.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::Uint8 | DataType::Int8 => 1,
            DataType::Uint16 | DataType::Int16 | DataType::Fp16 | DataType::Bf16 => 2,
            DataType::Uint32 | DataType::Int32 | DataType::Fp32 => 4,
            DataType::Uint64 | DataType::Int64 | DataType::Fp64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl fmt::Display for DataType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The elements of a tensor.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    /// Fixed-size elements, little-endian, row-major, no padding (BOOL is one byte, 0 or 1).
    Fixed(Bytes),
    /// BYTES elements, one buffer each.
    Bytes(Vec<Bytes>),
}

/// A host tensor: what `protocol` decodes into, `batching` concatenates and engines consume.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub dtype: DataType,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

/// Why a tensor's parts do not agree with each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TensorError {
    #[error("datatype {dtype} holds {expected} elements, but BYTES data was given")]
    BytesForFixed { dtype: DataType, expected: usize },
    #[error("datatype BYTES needs string elements, but raw fixed-size data was given")]
    FixedForBytes,
    #[error("shape {shape:?} holds {expected} elements of {dtype} ({expected_bytes} bytes), but {given_bytes} bytes were given")]
    ByteCount {
        dtype: DataType,
        shape: Vec<usize>,
        expected: usize,
        expected_bytes: usize,
        given_bytes: usize,
    },
    #[error("shape {shape:?} holds {expected} elements, but {given} were given")]
    ElementCount {
        shape: Vec<usize>,
        expected: usize,
        given: usize,
    },
    #[error("shape {0:?} is too large")]
    Overflow(Vec<usize>),
}

impl Tensor {
    /// Builds a tensor, checking that the data holds exactly the elements the shape promises.
    pub fn new(
        dtype: DataType,
        shape: Vec<usize>,
        data: TensorData,
    ) -> Result<Tensor, TensorError> {
        let expected = element_count(&shape).ok_or_else(|| TensorError::Overflow(shape.clone()))?;
        match (&data, dtype.size()) {
            (TensorData::Fixed(bytes), Some(size)) => {
                let expected_bytes = expected
                    .checked_mul(size)
                    .ok_or_else(|| TensorError::Overflow(shape.clone()))?;
                if bytes.len() != expected_bytes {
                    return Err(TensorError::ByteCount {
                        dtype,
                        shape,
                        expected,
                        expected_bytes,
                        given_bytes: bytes.len(),
                    });
                }
            }
            (TensorData::Bytes(items), None) => {
                if items.len() != expected {
                    return Err(TensorError::ElementCount {
                        shape,
                        expected,
                        given: items.len(),
                    });
                }
            }
            (TensorData::Bytes(_), Some(_)) => {
                return Err(TensorError::BytesForFixed { dtype, expected })
            }
            (TensorData::Fixed(_), None) => return Err(TensorError::FixedForBytes),
        }
        Ok(Tensor { dtype, shape, data })
    }

    /// Builds a fixed-size tensor from typed values (tests, warm-up data, benches).
    pub fn from_values<T: Element>(shape: Vec<usize>, values: &[T]) -> Result<Tensor, TensorError> {
        let mut bytes = Vec::with_capacity(std::mem::size_of_val(values));
        for v in values {
            v.write_le(&mut bytes);
        }
        Tensor::new(T::DTYPE, shape, TensorData::Fixed(Bytes::from(bytes)))
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Size of the leading dimension (the batch dimension for batching models).
    pub fn rows(&self) -> usize {
        self.shape.first().copied().unwrap_or(1)
    }

    /// Rows `start..start + count` along the first dimension, sharing the buffer (no copy).
    pub fn slice_rows(&self, start: usize, count: usize) -> Tensor {
        let rows = self.rows().max(1);
        let per_row = self.len() / rows;
        let mut shape = self.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = count;
        }
        let data = match &self.data {
            TensorData::Fixed(bytes) => {
                let size = self.dtype.size().unwrap_or(1);
                let begin = start * per_row * size;
                TensorData::Fixed(bytes.slice(begin..begin + count * per_row * size))
            }
            TensorData::Bytes(items) => {
                TensorData::Bytes(items[start * per_row..(start + count) * per_row].to_vec())
            }
        };
        Tensor {
            dtype: self.dtype,
            shape,
            data,
        }
    }

    /// Decodes fixed-size elements into typed values; `None` when `T` is not this datatype.
    pub fn to_values<T: Element>(&self) -> Option<Vec<T>> {
        let TensorData::Fixed(bytes) = &self.data else {
            return None;
        };
        if T::DTYPE != self.dtype {
            return None;
        }
        Some(bytes.chunks_exact(T::SIZE).map(T::read_le).collect())
    }

    /// The encoded size of the data in the V2 binary layout.
    pub fn binary_size(&self) -> usize {
        match &self.data {
            TensorData::Fixed(bytes) => bytes.len(),
            TensorData::Bytes(items) => items.iter().map(|b| 4 + b.len()).sum(),
        }
    }
}

/// Number of elements a shape holds, or `None` on overflow.
pub fn element_count(shape: &[usize]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
}

/// A Rust type that is one V2 fixed-size datatype.
pub trait Element: Copy + Send + 'static {
    const DTYPE: DataType;
    const SIZE: usize;
    fn write_le(self, out: &mut Vec<u8>);
    fn read_le(bytes: &[u8]) -> Self;
}

macro_rules! element {
    ($t:ty, $dt:expr) => {
        impl Element for $t {
            const DTYPE: DataType = $dt;
            const SIZE: usize = std::mem::size_of::<$t>();
            #[inline]
            fn write_le(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            #[inline]
            fn read_le(bytes: &[u8]) -> Self {
                let mut buf = [0u8; std::mem::size_of::<$t>()];
                buf.copy_from_slice(bytes);
                <$t>::from_le_bytes(buf)
            }
        }
    };
}

element!(u8, DataType::Uint8);
element!(u16, DataType::Uint16);
element!(u32, DataType::Uint32);
element!(u64, DataType::Uint64);
element!(i8, DataType::Int8);
element!(i16, DataType::Int16);
element!(i32, DataType::Int32);
element!(i64, DataType::Int64);
element!(half::f16, DataType::Fp16);
element!(half::bf16, DataType::Bf16);
element!(f32, DataType::Fp32);
element!(f64, DataType::Fp64);

impl Element for bool {
    const DTYPE: DataType = DataType::Bool;
    const SIZE: usize = 1;
    #[inline]
    fn write_le(self, out: &mut Vec<u8>) {
        out.push(self as u8);
    }
    #[inline]
    fn read_le(bytes: &[u8]) -> Self {
        bytes[0] != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for dt in DataType::ALL {
            assert_eq!(DataType::parse(dt.as_str()), Some(dt));
            assert_eq!(DataType::parse(dt.triton_config_name()), Some(dt));
        }
        assert_eq!(DataType::parse("TYPE_STRING"), Some(DataType::Bytes));
        assert_eq!(DataType::parse("FLOAT"), None);
    }

    #[test]
    fn new_checks_byte_count() {
        let err = Tensor::new(
            DataType::Fp32,
            vec![2, 2],
            TensorData::Fixed(Bytes::from(vec![0u8; 12])),
        )
        .unwrap_err();
        assert!(matches!(
            err,
            TensorError::ByteCount {
                given_bytes: 12,
                expected_bytes: 16,
                ..
            }
        ));
        let err = Tensor::new(DataType::Bytes, vec![3], TensorData::Bytes(vec![])).unwrap_err();
        assert!(matches!(
            err,
            TensorError::ElementCount {
                expected: 3,
                given: 0,
                ..
            }
        ));
    }

    #[test]
    fn slice_rows_shares_the_buffer() {
        let t = Tensor::from_values(vec![3, 2], &[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let s = t.slice_rows(1, 2);
        assert_eq!(s.shape, vec![2, 2]);
        assert_eq!(s.to_values::<f32>().unwrap(), vec![3.0, 4.0, 5.0, 6.0]);
        let (TensorData::Fixed(a), TensorData::Fixed(b)) = (&t.data, &s.data) else {
            panic!("fixed data expected")
        };
        assert_eq!(unsafe { a.as_ptr().add(8) }, b.as_ptr());
    }

    #[test]
    fn overflowing_shape_is_an_error() {
        let err = Tensor::new(
            DataType::Fp32,
            vec![usize::MAX, 4],
            TensorData::Fixed(Bytes::new()),
        )
        .unwrap_err();
        assert!(matches!(err, TensorError::Overflow(_)));
    }
}
