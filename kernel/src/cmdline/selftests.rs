//! Self-tests of the command-line parser (`mode=selftest`, feature
//! `selftest`), on a fixed string: the live command line is checked by the
//! boot self-tests.

use alloc::string::String;
use alloc::vec::Vec;

use super::CommandLine;
use crate::selftest_api::SelfTest;

/// Command-line self-tests: the parser on a fixed string (the live command
/// line is checked by the boot self-tests).
pub fn selftests() -> Vec<SelfTest> {
    alloc::vec![SelfTest {
        name: "cmdline: keys, repeated keys, values with '=', flags",
        run: test_parse
    }]
}

fn test_parse() -> Result<(), String> {
    let line = CommandLine::new(
        "  mode=selftest quiet log=debug  virtio_mmio.device=512@0xfeb00e00:12 \
         virtio_mmio.device=512@0xfeb00c00:11 opt=a=b log=trace empty=",
    );
    let mmio: Vec<&str> = line.values("virtio_mmio.device").collect();
    let checks = [
        ("get(mode)", line.get("mode") == Some("selftest")),
        ("last value wins", line.get("log") == Some("trace")),
        (
            "repeated key keeps order",
            mmio == ["512@0xfeb00e00:12", "512@0xfeb00c00:11"],
        ),
        ("value may contain '='", line.get("opt") == Some("a=b")),
        ("empty value", line.get("empty") == Some("")),
        ("missing key", line.get("absent").is_none()),
        ("prefix is not a key", line.get("mod").is_none()),
        ("flag is a bare word", line.has_flag("quiet")),
        ("key=value is not a flag", !line.has_flag("mode")),
    ];
    match checks.iter().find(|(_, ok)| !ok) {
        Some((what, _)) => Err(alloc::format!("{what} gave the wrong answer")),
        None => Ok(()),
    }
}
