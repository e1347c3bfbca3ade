//! The capability bookkeeping that every buffering operator of veer shares.

use timely::dataflow::operators::{Capability, InputCapability};

/// One capability, held at or below the time of everything an operator still buffers.
///
/// Operators of veer buffer records keyed by their event time and emit them once the frontier
/// has passed. They hold a single capability: the least time of any message received, moved
/// forward to the earliest buffered time after each activation, and dropped when nothing is
/// buffered, so the frontier downstream can advance.
#[derive(Default)]
pub struct HeldCapability {
    capability: Option<Capability<u64>>,
}

impl HeldCapability {
    /// Keeps an operator's initial capability, moved to `earliest`, when the operator starts
    /// with restored records buffered; drops it when nothing is buffered.
    pub fn restored(initial: Capability<u64>, earliest: Option<u64>) -> Self {
        let capability = earliest.map(|time| {
            let mut capability = initial;
            if *capability.time() < time {
                capability.downgrade(&time);
            }
            capability
        });
        HeldCapability { capability }
    }

    /// Keeps a capability for the message's least time, if it is below the one held.
    pub fn hold(&mut self, input: &InputCapability<u64>, output_port: usize) {
        let Some(time) = input.least() else { return };
        let lower = match &self.capability {
            Some(held) => time < held.time(),
            None => true,
        };
        if lower {
            self.capability = Some(input.delayed(time, output_port));
        }
    }

    /// Returns the held capability, if any.
    pub fn get(&self) -> Option<&Capability<u64>> {
        self.capability.as_ref()
    }

    /// Returns a capability for `time`, which must not be below the held one.
    pub fn at(&self, time: u64) -> Option<Capability<u64>> {
        self.capability.as_ref().map(|held| held.delayed(&time))
    }

    /// Moves the capability forward to `earliest` buffered time, or drops it when `None`.
    pub fn settle(&mut self, earliest: Option<u64>) {
        match earliest {
            None => self.capability = None,
            Some(time) => {
                if let Some(held) = &mut self.capability {
                    if *held.time() < time {
                        held.downgrade(&time);
                    }
                }
            }
        }
    }
}
