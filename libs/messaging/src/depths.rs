//! Queue depths per channel, for the monitor (DESIGN.md §12).
//!
//! Only live work is counted, and only through the indexes that hold it: per outbound
//! channel its Preparing entries (`msg/prep/<peer>`), its ready queue (`msg/ready/<peer>`)
//! and the pending file's messages (one channel row); per inbound state its queue entries
//! (`msg/q/<state>`), grouped by the peer each entry names. Sent messages (kept
//! `sent_retention` for duplicate answers) and cleaned-up ones are history, never read: the
//! cost follows what is waiting, not what went through.

use std::collections::BTreeMap;

use tern_meta::{Key, MetaTxn};

use crate::error::{Error, Result};
use crate::service::Context;
use crate::state::{InState, OutChannel, OutState, QueueEntry, keys};

/// Which side of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Messages to the peer.
    Out,
    /// Messages from the peer.
    In,
}

impl Direction {
    /// `out` or `in`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// One queue of one channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelDepth {
    /// The peer at the channel's other end.
    pub peer: String,
    /// Its side.
    pub direction: Direction,
    /// The state the messages wait in (`Preparing`, `ReadyToSend`, `Sending`; `received`,
    /// `ready`, `processing`, `cleanup`, `failed`).
    pub state: &'static str,
    /// How many.
    pub depth: u64,
}

/// Outbound states counted (Sent is a kept record, not work).
pub const OUT_STATES: [OutState; 3] = [
    OutState::Preparing,
    OutState::ReadyToSend,
    OutState::Sending,
];

/// Inbound states counted.
pub const IN_STATES: [InState; 5] = [
    InState::Received,
    InState::ReadyForProcessing,
    InState::Processing,
    InState::ReadyForCleanup,
    InState::Failed,
];

/// Entries under `prefix`, keys only (read in pages).
fn count(tx: &mut MetaTxn<'_>, prefix: &Key) -> tern_meta::Result<u64> {
    const PAGE: usize = 1000;
    let (mut start, end) = prefix.prefix_range();
    let mut n = 0u64;
    loop {
        let page = tx.raw().scan(&start, &end, PAGE)?;
        n += page.len() as u64;
        match page.last() {
            Some((k, _)) if page.len() == PAGE => {
                start = k.clone();
                start.push(0);
            }
            _ => return Ok(n),
        }
    }
}

impl Context {
    /// Every channel's queue depths: each outbound channel's three states (zeros included,
    /// so a drained queue reads 0), and each inbound state's entries by peer (channels
    /// registered here read 0 in every state).
    pub async fn queue_depths(&self) -> Result<Vec<ChannelDepth>> {
        self.read("count queue depths", |tx| {
            let meta = Error::meta("count queue depths");
            let mut out = Vec::new();
            let chans = tx
                .scan_prefix::<OutChannel>(&keys::out_channels())
                .map_err(meta)?;
            for (_, c) in chans {
                let peer = &c.receiver;
                let prep = count(tx, &keys::preparing(peer)).map_err(Error::meta("count"))?;
                let ready = count(tx, &keys::ready_queue(peer)).map_err(Error::meta("count"))?;
                let sending = c.pending.as_ref().map_or(0, |p| p.ids.len() as u64);
                for (state, depth) in OUT_STATES.iter().zip([prep, ready, sending]) {
                    out.push(ChannelDepth {
                        peer: peer.to_string(),
                        direction: Direction::Out,
                        state: state.name(),
                        depth,
                    });
                }
            }
            let mut ins: BTreeMap<(String, &'static str), u64> = BTreeMap::new();
            let (first, end) = keys::in_channels().prefix_range();
            for (k, _) in tx
                .raw()
                .scan(&first, &end, usize::MAX)
                .map_err(Error::meta("list inbound channels"))?
            {
                let peer = match Key::from_bytes(k).elements() {
                    Ok(el) => match el.get(2) {
                        Some(tern_meta::Element::Str(p)) => p.clone(),
                        _ => continue,
                    },
                    Err(_) => continue,
                };
                for s in IN_STATES {
                    ins.insert((peer.clone(), s.queue()), 0);
                }
            }
            for s in IN_STATES {
                for (_, e) in tx
                    .scan_prefix::<QueueEntry>(&keys::queue(s))
                    .map_err(Error::meta("count inbound queue"))?
                {
                    *ins.entry((e.peer.to_string(), s.queue())).or_default() += 1;
                }
            }
            out.extend(ins.into_iter().map(|((peer, state), depth)| ChannelDepth {
                peer,
                direction: Direction::In,
                state,
                depth,
            }));
            Ok(out)
        })
        .await
    }
}
