//! Self-tests of the clock (`mode=selftest`, feature `selftest`): the
//! calibrated TSC frequency is plausible, uptime only moves forward, and a
//! known interval measured again on the PIT (or the RTC) agrees with it.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use super::{
    calibration_source, pit_channel0_window, pit_channel2_window, rtc_second, stop_pit_channel0,
    ticks_to_ns, tsc_hz, uptime_ns, CalibrationSource, Measurement, PIT_HZ,
};
use crate::selftest_api::SelfTest;

/// The clock self-tests.
pub fn selftests() -> Vec<SelfTest> {
    vec![
        SelfTest {
            name: "clock: TSC frequency is plausible",
            run: test_frequency_plausible,
        },
        SelfTest {
            name: "clock: uptime is monotonic",
            run: test_uptime_monotonic,
        },
        SelfTest {
            name: "clock: uptime agrees with an independent timer",
            run: test_uptime_matches_reference,
        },
    ]
}

fn test_frequency_plausible() -> Result<(), String> {
    let hz = tsc_hz();
    if !(100_000_000..=10_000_000_000).contains(&hz) {
        return Err(format!("tsc_hz = {hz}, outside 100 MHz..10 GHz"));
    }
    if calibration_source() == CalibrationSource::None {
        return Err(String::from("the TSC was never calibrated"));
    }
    let one_second = ticks_to_ns(hz);
    if one_second.abs_diff(1_000_000_000) > 1_000 {
        return Err(format!("{hz} ticks convert to {one_second} ns, not 1 s"));
    }
    Ok(())
}

fn test_uptime_monotonic() -> Result<(), String> {
    const READS: u32 = 20_000;
    let first = uptime_ns();
    let mut previous = first;
    for i in 0..READS {
        let now = uptime_ns();
        if now < previous {
            return Err(format!(
                "read {i}: uptime went back from {previous} to {now} ns"
            ));
        }
        previous = now;
    }
    if previous <= first {
        return Err(format!(
            "uptime did not advance over {READS} reads ({first} ns)"
        ));
    }
    Ok(())
}

/// Measures a known interval on the PIT (or one RTC second) again and checks
/// that the TSC cycles counted across it convert to the same time, within
/// 20 %. A disturbed measurement (see `Measurement`) is retried a few times.
fn test_uptime_matches_reference() -> Result<(), String> {
    const WINDOW_TICKS: u16 = (PIT_HZ / 20) as u16; // 50 ms
    let (window, what): (fn(u16) -> Option<Measurement>, &str) = match calibration_source() {
        CalibrationSource::PitChannel2 => (pit_channel2_window, "PIT channel 2"),
        CalibrationSource::PitChannel0 => (pit_channel0_window, "PIT channel 0"),
        _ => (|_| rtc_second(), "RTC second"),
    };
    let mut measurement = None;
    for _ in 0..4 {
        let attempt = window(WINDOW_TICKS);
        measurement = attempt;
        if attempt.is_none_or(|m| m.is_precise()) {
            break;
        }
    }
    if calibration_source() == CalibrationSource::PitChannel0 {
        stop_pit_channel0();
    }
    let measurement = measurement.ok_or(format!("{what} did not respond"))?;
    let expected_ns = measurement.reference_ns();
    let measured_ns = ticks_to_ns(measurement.cycles());
    log::debug!(
        "a {what} interval of {expected_ns} ns took {measured_ns} ns by the TSC \
         (bracket {}..{} ns)",
        ticks_to_ns(measurement.shortest),
        ticks_to_ns(measurement.longest)
    );
    if measured_ns.abs_diff(expected_ns) > expected_ns / 5 {
        return Err(format!(
            "{what}: expected {expected_ns} ns, the TSC counted {measured_ns} ns"
        ));
    }
    Ok(())
}
