//! Counts websocket frames in a relayed byte stream by reading only frame headers
//! (RFC 6455 §5.2), so the relay stays a byte copy and the count costs a few comparisons.

/// Frame-boundary tracker for one direction.
#[derive(Debug, Default)]
pub struct FrameCounter {
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// A frame header split across reads.
    header: [u8; 14],
    have: usize,
}

fn header_len(b0_b1: &[u8]) -> Option<usize> {
    let b1 = *b0_b1.get(1)?;
    let ext = match b1 & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
    Some(2 + ext + mask)
}

fn payload_len(header: &[u8]) -> u64 {
    match header[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([header[2], header[3]])),
        127 => u64::from_be_bytes([
            header[2], header[3], header[4], header[5], header[6], header[7], header[8], header[9],
        ]),
        n => u64::from(n),
    }
}

impl FrameCounter {
    /// Whether the bytes fed so far end exactly at a frame boundary.
    pub fn at_boundary(&self) -> bool {
        self.skip == 0 && self.have == 0
    }

    /// Consumes relayed bytes; returns how many frames started in them.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut frames = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            // Accumulate a header (2 to 14 bytes).
            let need = if self.have < 2 {
                2
            } else {
                header_len(&self.header[..self.have]).unwrap_or(2)
            };
            let take = (need - self.have).min(data.len());
            self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have < need {
                continue;
            }
            let full = header_len(&self.header[..self.have]).unwrap_or(2);
            if self.have < full {
                continue;
            }
            frames += 1;
            self.skip = payload_len(&self.header[..full]);
            self.have = 0;
        }
        frames
    }
}

/// Close status 1008, "policy violation" (RFC 6455 §7.4.1): the credential that opened the
/// websocket expired or was revoked.
pub const CLOSE_POLICY: u16 = 1008;

/// A close frame with `code` and a short `reason` (cut to fit a control frame's 125 bytes).
/// `mask`: frames toward a server must be masked (§5.3), frames toward a client must not.
pub fn close_frame(code: u16, reason: &str, mask: Option<[u8; 4]>) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    let mut frame = vec![0x88, payload.len() as u8];
    if let Some(key) = mask {
        frame[1] |= 0x80;
        frame.extend_from_slice(&key);
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= key[i % 4];
        }
    }
    frame.extend_from_slice(&payload);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_frames_masked_and_not() {
        assert_eq!(close_frame(1001, "", None), [0x88, 0x02, 0x03, 0xE9]);
        let f = close_frame(CLOSE_POLICY, "credential revoked", None);
        assert_eq!(&f[..4], &[0x88, 20, 0x03, 0xF0]);
        assert_eq!(&f[4..], b"credential revoked");
        let key = [1, 2, 3, 4];
        let m = close_frame(CLOSE_POLICY, "x", Some(key));
        assert_eq!(m[1], 0x80 | 3);
        let unmasked: Vec<u8> = m[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i % 4])
            .collect();
        assert_eq!(unmasked, [0x03, 0xF0, b'x']);
        assert_eq!(close_frame(1008, &"é".repeat(100), None).len(), 2 + 2 + 122);
        let mut c = FrameCounter::default();
        assert_eq!(c.feed(&m), 1);
        assert!(c.at_boundary());
    }

    fn frame(payload: usize, masked: bool) -> Vec<u8> {
        let mut f = vec![0x81];
        let m = if masked { 0x80 } else { 0 };
        if payload < 126 {
            f.push(m | payload as u8);
        } else if payload < 65536 {
            f.push(m | 126);
            f.extend_from_slice(&(payload as u16).to_be_bytes());
        } else {
            f.push(m | 127);
            f.extend_from_slice(&(payload as u64).to_be_bytes());
        }
        if masked {
            f.extend_from_slice(&[1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(b'x', payload));
        f
    }

    #[test]
    fn counts_frames_across_any_split() {
        let mut stream = Vec::new();
        for (len, masked) in [
            (5, true),
            (200, false),
            (70_000, true),
            (0, false),
            (125, true),
        ] {
            stream.extend(frame(len, masked));
        }
        for chunk in [1, 2, 3, 7, 100, 4096, stream.len()] {
            let mut c = FrameCounter::default();
            let total: u64 = stream.chunks(chunk).map(|part| c.feed(part)).sum();
            assert_eq!(total, 5, "chunk size {chunk}");
        }
    }
}
