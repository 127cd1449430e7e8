//! Reference speeds for benchmarks: the machine's raw AES-256-GCM re-encrypt rate with
//! ring (open + seal in place of 1 MiB segments, no copies, no I/O), which Tern's
//! streaming and replication figures are printed against.

use std::time::{Duration, Instant};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// Segment size of the raw reference.
pub const RAW_SEGMENT: usize = 1 << 20;

fn gbps(bytes: usize, t: Duration) -> f64 {
    bytes as f64 / t.as_secs_f64() / 1e9
}

/// Fills `buf` with xorshift pseudo-random bytes from `seed` (incompressible test data).
pub fn fill(buf: &mut [u8], seed: u64) {
    let mut x = seed | 1;
    for c in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        c.copy_from_slice(&b[..c.len()]);
    }
}

/// The nonce of segment `i` of a raw buffer.
fn nonce(i: u32) -> [u8; 12] {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&i.to_be_bytes());
    n
}

/// Re-encrypts segment `i` (plaintext + 16-byte tag) in place: opened under `from`,
/// sealed under `to`. Returns its plaintext length.
pub fn reseal(from: &LessSafeKey, to: &LessSafeKey, i: u32, seg: &mut [u8]) -> usize {
    let n = nonce(i);
    let len = seg.len() - 16;
    from.open_in_place(Nonce::assume_unique_for_key(n), Aad::from(&n), seg)
        .expect("raw open");
    let (p, t) = seg.split_at_mut(len);
    let tag = to
        .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::from(&n), p)
        .expect("raw seal");
    t.copy_from_slice(tag.as_ref());
    len
}

/// Re-encrypts `buf` (sealed segments of `seg` bytes + tag) in place `rounds` times,
/// alternating two keys. Returns plaintext bytes processed.
pub fn raw_rounds(buf: &mut [u8], seg: usize, keys: &[LessSafeKey; 2], rounds: usize) -> usize {
    let stride = seg + 16;
    let mut done = 0;
    for r in 0..rounds {
        let (from, to) = (&keys[r % 2], &keys[(r + 1) % 2]);
        for (i, s) in buf.chunks_mut(stride).enumerate() {
            done += reseal(from, to, i as u32, s);
        }
    }
    done
}

/// A buffer of `bytes` plaintext sealed under `key` in segments of `seg` bytes + tag.
pub fn raw_buffer(bytes: usize, seg: usize, key: &LessSafeKey) -> Vec<u8> {
    let stride = seg + 16;
    let segs = bytes.div_ceil(seg);
    let mut buf = vec![0u8; bytes + 16 * segs];
    for (i, s) in buf.chunks_mut(stride).enumerate() {
        let len = s.len() - 16;
        fill(&mut s[..len], i as u64 + 7);
        let n = nonce(i as u32);
        let (p, t) = s.split_at_mut(len);
        let tag = key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(n), Aad::from(&n), p)
            .expect("seal");
        t.copy_from_slice(tag.as_ref());
    }
    buf
}

/// The two keys [`raw_rounds`] alternates.
pub fn raw_keys() -> [LessSafeKey; 2] {
    [1u8, 2].map(|b| LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[b; 32]).expect("key")))
}

/// Best-of-3 raw re-encrypt speed with `threads` threads, each on its own buffer.
pub fn raw_speed(bytes: usize, threads: usize) -> f64 {
    let rounds = (1usize << 30).div_ceil(bytes).clamp(1, 4);
    let mut best = 0f64;
    let mut bufs: Vec<Vec<u8>> = (0..threads)
        .map(|_| raw_buffer(bytes, RAW_SEGMENT, &raw_keys()[0]))
        .collect();
    for attempt in 0..3 {
        let start = Instant::now();
        let done: usize = std::thread::scope(|s| {
            let handles: Vec<_> = bufs
                .iter_mut()
                .map(|b| {
                    s.spawn(move || {
                        let keys = raw_keys();
                        // even number of rounds keeps buffers under key 0 between attempts
                        let _ = attempt;
                        raw_rounds(b, RAW_SEGMENT, &keys, rounds * 2)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("raw thread"))
                .sum()
        });
        best = best.max(gbps(done, start.elapsed()));
    }
    best
}
