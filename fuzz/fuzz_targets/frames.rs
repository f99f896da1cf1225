//! The websocket frame-header reader of the relay (`hubgate::fuzzing::FrameCounter`): the
//! count does not depend on how the stream is split into reads.
#![no_main]

use hubgate::fuzzing::FrameCounter;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    // The first byte picks the read sizes; the rest is the stream.
    let Some((&seed, stream)) = input.split_first() else {
        return;
    };
    let whole = FrameCounter::default().feed(stream);
    // Every frame has a header of at least two bytes.
    assert!(
        whole <= stream.len() as u64 / 2,
        "{whole} frames in {} bytes",
        stream.len()
    );

    let mut counter = FrameCounter::default();
    let mut split = 0;
    let mut rest = stream;
    let mut step = usize::from(seed % 17) + 1;
    while !rest.is_empty() {
        let n = step.min(rest.len());
        split += counter.feed(&rest[..n]);
        rest = &rest[n..];
        step = (step * 7 + usize::from(seed)) % 23 + 1;
    }
    assert_eq!(
        split, whole,
        "split reads counted differently (seed {seed})"
    );
    // Empty reads count nothing.
    assert_eq!(counter.feed(&[]), 0);
});
