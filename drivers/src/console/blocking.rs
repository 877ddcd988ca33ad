//! # Blocking helpers (virtio 1.2 §2.7.7, §5.3.6)
//!
//! Built only on the non-blocking core (`poll`, `read`, `write`) and the
//! one interrupt wait of the crate, [`crate::irq::wait_until_used`]: turn
//! the queues' interrupts on, look again, wait through the caller's
//! [`Wait`], turn them off. Each gives up with [`ConsoleError::Timeout`]
//! when the wait does, saying how far it got.

use crate::queue::Ring;
use hal::Hal;

use super::{ConsoleDevice, ConsoleError};
use crate::device::{Wait, WaitTimeout};
use crate::irq;
use crate::transport::Transport;

impl<H: Hal, T: Transport> ConsoleDevice<H, T> {
    /// Writes all of `data` to port `id`, waiting through `wait` whenever
    /// the transmit queue is full. On a timeout the error says how many
    /// bytes were taken; exactly those reach the device, in order.
    pub fn write_all<W: Wait + ?Sized>(
        &mut self,
        id: u32,
        data: &[u8],
        wait: &mut W,
    ) -> Result<(), ConsoleError> {
        let mut done = 0;
        while done < data.len() {
            let taken = self.write(id, &data[done..])?;
            done += taken;
            if taken == 0 {
                self.wait_for_transmit(id, wait)
                    .map_err(|t| ConsoleError::Timeout {
                        waits: t.waits,
                        done,
                    })?;
            }
        }
        Ok(())
    }

    /// Waits until the device has returned every transmit buffer of port
    /// `id`: everything written has left the driver.
    pub fn flush<W: Wait + ?Sized>(&mut self, id: u32, wait: &mut W) -> Result<(), ConsoleError> {
        loop {
            self.poll()?;
            let port = self.live_port(id).ok_or(ConsoleError::NoSuchPort(id))?;
            if port.transmit.in_flight() == 0 {
                return Ok(());
            }
            self.wait_for_transmit(id, wait)
                .map_err(|t| ConsoleError::Timeout {
                    waits: t.waits,
                    done: 0,
                })?;
        }
    }

    /// Reads at least one byte of port `id` into `buf`, waiting through
    /// `wait` until some arrive.
    pub fn read_wait<W: Wait + ?Sized>(
        &mut self,
        id: u32,
        buf: &mut [u8],
        wait: &mut W,
    ) -> Result<usize, ConsoleError> {
        if buf.is_empty() {
            return Ok(0);
        }
        let mut got = 0;
        self.wait_until(wait, |console| {
            got = console.read(id, buf)?;
            Ok(got > 0)
        })?;
        Ok(got)
    }

    /// Polls, and waits through `wait` in between, until `done` returns
    /// `Ok(true)` (a port appears, a name arrives, data is there). An error
    /// from `done` ends the wait with that error.
    pub fn wait_until<W: Wait + ?Sized>(
        &mut self,
        wait: &mut W,
        mut done: impl FnMut(&mut Self) -> Result<bool, ConsoleError>,
    ) -> Result<(), ConsoleError> {
        loop {
            self.poll()?;
            if done(self)? {
                return Ok(());
            }
            // Receive interrupts on, a second look, the wait, interrupts
            // off again (§2.7.7).
            irq::wait_until_used(
                wait,
                self,
                |console| console.enable_interrupts(),
                |console| console.disable_interrupts(),
            )
            .map_err(|t| ConsoleError::Timeout {
                waits: t.waits,
                done: 0,
            })?;
        }
    }

    /// Waits once for port `id`'s transmit buffers to come back. If the
    /// wait sleeps until an interrupt, transmit interrupts are turned on
    /// for it (and off again after); if completions arrived meanwhile it
    /// does not wait at all. Then collects.
    pub(super) fn wait_for_transmit<W: Wait + ?Sized>(
        &mut self,
        id: u32,
        wait: &mut W,
    ) -> Result<(), WaitTimeout> {
        let port = id as usize;
        let result = irq::wait_until_used(
            wait,
            &mut self.ports,
            // No such port: nothing to wait for.
            |ports| {
                ports
                    .get_mut(port)
                    .is_none_or(|port| port.transmit.enable_interrupts())
            },
            |ports| {
                if let Some(port) = ports.get_mut(port) {
                    port.transmit.disable_interrupts();
                }
            },
        );
        // A removed port or a broken queue shows up in the caller's next
        // write or poll; here only the waiting can fail.
        let _ = self.poll();
        result.map(|_| ())
    }
}
