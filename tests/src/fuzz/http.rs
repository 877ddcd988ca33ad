//! Fuzz target `http_request`: bytes a network client sends to port 80,
//! given to the kernel's request-head parser (`kernel/src/net/http_request.rs`,
//! compiled here unchanged: it uses only `core`).
//!
//! Besides "no panic", the target checks the promises the parser's
//! documentation makes to the server, which calls it again each time more
//! bytes arrive:
//! - a complete head is complete on its own bytes (`head_len`) with the
//!   same request, and every shorter prefix of it is `Incomplete`, never a
//!   refusal (a request may arrive one byte per segment);
//! - a refusal stays a refusal when more bytes arrive (it was proven);
//! - a complete request's path starts with `/`.

#[allow(dead_code)]
#[path = "../../../kernel/src/net/http_request.rs"]
pub mod http_request;

use http_request::{parse, Parsed};

/// Prefix lengths worth checking for `len` bytes: all of them for short
/// inputs, an even spread for long ones (the parser is linear, the check
/// quadratic).
fn prefixes(len: usize) -> impl Iterator<Item = usize> {
    let step = (len / 64).max(1);
    (0..len).step_by(step)
}

/// The request-head parser against arbitrary client bytes (see the module documentation).
pub fn http_request(data: &[u8]) {
    match parse(data) {
        Parsed::Complete(request) => {
            assert!(request.head_len <= data.len(), "head_len beyond the bytes");
            assert!(request.path.starts_with('/'), "path {:?}", request.path);
            let head = &data[..request.head_len];
            match parse(head) {
                Parsed::Complete(again) => {
                    assert_eq!(again, request, "the head alone parses differently")
                }
                other => panic!("the head alone gives {other:?}"),
            }
            for p in prefixes(request.head_len) {
                match parse(&data[..p]) {
                    Parsed::Incomplete => {}
                    other => panic!("a {p}-byte prefix of a complete head gives {other:?}"),
                }
            }
        }
        Parsed::Rejected(_) => {
            // Refused: no prefix that was refused may be followed by a
            // longer one that is not.
            let mut refused_at = None;
            for p in prefixes(data.len()) {
                match parse(&data[..p]) {
                    Parsed::Rejected(_) => refused_at = refused_at.or(Some(p)),
                    other => assert!(
                        refused_at.is_none(),
                        "refused at {refused_at:?} bytes, then {other:?} at {p}"
                    ),
                }
            }
        }
        Parsed::Incomplete => {
            for p in prefixes(data.len()) {
                assert!(
                    matches!(parse(&data[..p]), Parsed::Incomplete),
                    "a prefix of an incomplete head is decided"
                );
            }
        }
    }
}
