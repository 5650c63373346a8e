//! RecordIO, the framing of Mesos' event streams (Mesos `docs/recordio.md`): each record is its length in
//! bytes as ASCII decimal, a `\n`, then the record itself; records follow each other with nothing between
//! them, and no record is empty. Clients depend on exactly that (pymesos stops reading after a stray `\n`), so
//! a server writes one record per HTTP chunk.

/// Frames `record`: `<length>\n<record>`.
pub fn encode(record: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(record.len() + 12);
    out.extend_from_slice(record.len().to_string().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(record);
    out
}

/// `value` as one record of compact JSON (serde_json writes no newline inside).
pub fn json<T: serde::Serialize>(value: &T) -> Vec<u8> {
    encode(&serde_json::to_vec(value).expect("a protocol message serializes"))
}

/// A malformed stream: what stands where a length should.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "malformed RecordIO stream: {}", self.0)
    }
}

impl std::error::Error for Malformed {}

/// Reads records out of a byte stream that arrives in arbitrary pieces.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    /// The largest record accepted, in bytes; 0: 64 MiB.
    max_record: usize,
}

impl Decoder {
    /// A decoder that refuses records over `max_record` bytes (0: 64 MiB, as [`Decoder::default`]).
    pub fn new(max_record: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            max_record,
        }
    }

    /// Adds the next bytes of the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete record, if the bytes pushed so far hold one.
    ///
    /// # Errors
    /// [`Malformed`] when the stream does not start with a decimal length and `\n`, the length is 0, or it is
    /// above the limit; the stream cannot be read further.
    pub fn next_record(&mut self) -> Result<Option<Vec<u8>>, Malformed> {
        let Some(nl) = self.buf.iter().position(|b| *b == b'\n') else {
            if self.buf.len() > 20 || self.buf.iter().any(|b| !b.is_ascii_digit()) {
                return Err(Malformed(format!(
                    "{:?}",
                    String::from_utf8_lossy(&self.buf)
                )));
            }
            return Ok(None);
        };
        let head = &self.buf[..nl];
        let len: usize = std::str::from_utf8(head)
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Malformed(format!("{:?}", String::from_utf8_lossy(head))))?;
        let max = if self.max_record == 0 {
            64 << 20
        } else {
            self.max_record
        };
        if len == 0 || len > max {
            return Err(Malformed(format!("record length {len}")));
        }
        if self.buf.len() < nl + 1 + len {
            return Ok(None);
        }
        let record = self.buf[nl + 1..nl + 1 + len].to_vec();
        self.buf.drain(..nl + 1 + len);
        Ok(Some(record))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_split_anywhere_come_out_whole_and_in_order() {
        let mut stream = encode(b"{\"type\":\"HEARTBEAT\"}");
        stream.extend(encode("héllo".as_bytes()));
        for cut in 0..stream.len() {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            for piece in [&stream[..cut], &stream[cut..]] {
                d.push(piece);
                while let Some(r) = d.next_record().unwrap() {
                    out.push(r);
                }
            }
            assert_eq!(
                out,
                vec![
                    b"{\"type\":\"HEARTBEAT\"}".to_vec(),
                    "héllo".as_bytes().to_vec()
                ]
            );
        }
    }

    #[test]
    fn a_stream_that_is_not_recordio_is_refused() {
        for bad in [&b"\n{}"[..], b"0\n", b"x1\n{", b"{\"type\":1}"] {
            let mut d = Decoder::default();
            d.push(bad);
            assert!(d.next_record().is_err(), "{bad:?}");
        }
    }
}
