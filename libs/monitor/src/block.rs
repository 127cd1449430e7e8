//! Counter blocks: one per agent, written only by it, read by the monitor.
//!
//! A block is a run of `AtomicU64`s on its own cache lines (`#[repr(align(128))]`: two
//! lines, so that the adjacent-line prefetcher does not make neighbours share either). Its
//! writer is whichever agent holds its [`Claim`]; a claim is exclusive (a flag swapped
//! with `Acquire`), so every field has exactly one writer and is updated with a plain
//! load + store, never a read-modify-write.
//!
//! # Publication: a sequence lock
//!
//! The figures of one unit of work (a transaction's rows, bytes, files and end-to-end
//! latency) belong together: the monitor must never see the rows of a transaction without
//! its bytes. The writer makes the block's sequence number odd, writes the fields, and
//! makes it even again; the reader retries while the number is odd or changed under it:
//!
//! ```text
//!  writer (agent)                              reader (monitor)
//!  seq := s+1 (odd)                            s1 := seq (Acquire); odd → retry
//!  fence(SeqCst)                               read every field (Relaxed)
//!  read commands (interval, reset, sampling)   fence(Acquire)
//!  write the fields (Relaxed)                  s2 := seq; s1 != s2 → retry
//!  seq := s+2 (Release)
//! ```
//!
//! (The pattern of crossbeam's `AtomicCell` fallback and Boehm's "Can seqlocks get along
//! with programming language memory models?": the release fence after the odd store and the
//! acquire fence before the second read make a reader that saw any new field see the odd
//! or the new sequence number.)
//!
//! # Commands: monitor → agents
//!
//! The monitor writes three command words per pool (the interval number, a reset count, a
//! latency sampling rate); an agent reads them *inside* its write section, after a
//! `SeqCst` fence, and the monitor reads the blocks after its own `SeqCst` fence following
//! the command store. Of the two (agent: odd store, fence, command load; monitor: command
//! store, fence, sequence load) at least one sees the other: either the agent's unit
//! carries the new interval/reset, or the monitor waits for that unit to complete and
//! reads it with the old one. So interval figures and resets are exact, not "about right
//! at the boundaries".
//!
//! The hot path (`Claim::publish`) takes no lock, allocates nothing and sends nothing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering, fence};

use serde::{Deserialize, Serialize};

/// What kind of work an agent does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentKind {
    /// Apply agents: one shipped transaction committed on a replica per unit.
    Apply,
    /// Copy workers on the source: one snapshot response (its re-encrypted files) per unit.
    Copy,
    /// Copy workers on the replica: one imported snapshot per unit.
    Import,
    /// The shipper: one log record sent to one downstream replica per unit.
    Ship,
}

impl AgentKind {
    /// Every kind, in report order.
    pub const ALL: [AgentKind; 4] = [
        AgentKind::Apply,
        AgentKind::Copy,
        AgentKind::Import,
        AgentKind::Ship,
    ];

    /// Its name in reports and metrics.
    pub fn name(self) -> &'static str {
        match self {
            AgentKind::Apply => "apply",
            AgentKind::Copy => "copy",
            AgentKind::Import => "import",
            AgentKind::Ship => "ship",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The figures of one unit of work, published as one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Unit {
    /// Rows it carried.
    pub rows: u64,
    /// Bytes it moved.
    pub bytes: u64,
    /// Files it copied.
    pub files: u64,
    /// End-to-end latency: source commit → visible here (apply agents), or how long the
    /// unit took (others); `None` when not measured.
    pub latency_ms: Option<u64>,
}

/// Cumulative or per-interval figures of one block (or a sum of blocks).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Figures {
    /// Units of work (transactions applied, snapshots served, records shipped…).
    pub units: u64,
    /// Rows.
    pub rows: u64,
    /// Bytes.
    pub bytes: u64,
    /// Files.
    pub files: u64,
    /// Units that failed.
    pub errors: u64,
    /// Units whose latency was measured.
    pub latency_count: u64,
    /// Sum of the measured latencies.
    pub latency_sum_ms: u64,
    /// Largest measured latency.
    pub latency_max_ms: u64,
}

impl Figures {
    /// Adds `o` (sums; the larger maximum).
    pub fn add(&mut self, o: &Figures) {
        self.units += o.units;
        self.rows += o.rows;
        self.bytes += o.bytes;
        self.files += o.files;
        self.errors += o.errors;
        self.latency_count += o.latency_count;
        self.latency_sum_ms += o.latency_sum_ms;
        self.latency_max_ms = self.latency_max_ms.max(o.latency_max_ms);
    }

    /// Average measured latency (0 when none was).
    pub fn latency_avg_ms(&self) -> f64 {
        if self.latency_count == 0 {
            0.0
        } else {
            self.latency_sum_ms as f64 / self.latency_count as f64
        }
    }
}

/// The field run of one set of figures.
#[derive(Debug, Default)]
struct Cells {
    units: AtomicU64,
    rows: AtomicU64,
    bytes: AtomicU64,
    files: AtomicU64,
    errors: AtomicU64,
    latency_count: AtomicU64,
    latency_sum_ms: AtomicU64,
    latency_max_ms: AtomicU64,
}

// Single writer: a load and a store, no read-modify-write.
fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Cells {
    fn add(&self, u: &Unit, error: bool) {
        bump(&self.units, 1);
        bump(&self.rows, u.rows);
        bump(&self.bytes, u.bytes);
        bump(&self.files, u.files);
        if error {
            bump(&self.errors, 1);
        }
        if let Some(l) = u.latency_ms {
            bump(&self.latency_count, 1);
            bump(&self.latency_sum_ms, l);
            if l > self.latency_max_ms.load(Ordering::Relaxed) {
                self.latency_max_ms.store(l, Ordering::Relaxed);
            }
        }
    }

    fn clear(&self) {
        for c in self.all() {
            c.store(0, Ordering::Relaxed);
        }
    }

    fn copy_from(&self, o: &Cells) {
        for (d, s) in self.all().into_iter().zip(o.all()) {
            d.store(s.load(Ordering::Relaxed), Ordering::Relaxed);
        }
    }

    fn all(&self) -> [&AtomicU64; 8] {
        [
            &self.units,
            &self.rows,
            &self.bytes,
            &self.files,
            &self.errors,
            &self.latency_count,
            &self.latency_sum_ms,
            &self.latency_max_ms,
        ]
    }

    fn read(&self) -> Figures {
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Figures {
            units: l(&self.units),
            rows: l(&self.rows),
            bytes: l(&self.bytes),
            files: l(&self.files),
            errors: l(&self.errors),
            latency_count: l(&self.latency_count),
            latency_sum_ms: l(&self.latency_sum_ms),
            latency_max_ms: l(&self.latency_max_ms),
        }
    }
}

/// One agent's block.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct AgentBlock {
    /// Odd while its writer is publishing.
    seq: AtomicU64,
    /// Since start or the last reset the writer applied.
    cumulative: Cells,
    /// The interval `current_gen`.
    current_gen: AtomicU64,
    current: Cells,
    /// The interval before (moved there when the first unit of a newer one arrives).
    previous_gen: AtomicU64,
    previous: Cells,
    /// The reset count last applied.
    reset_ack: AtomicU64,
    /// Units seen (sampling counts these; never reset).
    seen: AtomicU64,
    /// Held by its writer.
    owned: AtomicBool,
    /// Ever claimed (the monitor reads only those).
    used: AtomicBool,
}

/// Commands from the monitor to a pool's agents, on a line of their own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Commands {
    /// The interval in progress.
    interval: AtomicU64,
    /// Resets asked for.
    reset: AtomicU64,
    /// Measure the latency of one unit in this many (0 and 1: every unit).
    sample_every: AtomicU64,
}

/// A consistent reading of one block.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reading {
    /// Since start or the last reset.
    pub cumulative: Figures,
    /// The reset count its cumulative figures follow.
    pub reset_ack: u64,
    /// Figures of the interval `current_gen`.
    pub current: Figures,
    /// The interval of `current`.
    pub current_gen: u64,
    /// Figures of the interval `previous_gen`.
    pub previous: Figures,
    /// The interval of `previous`.
    pub previous_gen: u64,
    /// How many times its writer published (half its sequence number).
    pub publications: u64,
}

impl Reading {
    /// Its figures of interval `g` (none when it published nothing in that interval).
    pub fn interval(&self, g: u64) -> Figures {
        if self.current_gen == g {
            self.current
        } else if self.previous_gen == g {
            self.previous
        } else {
            Figures::default()
        }
    }
}

impl AgentBlock {
    fn publish(&self, cmd: &Commands, u: &Unit, error: bool) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        // Orders the odd store before the field stores (release half) and before the
        // command loads (the store→load half only SeqCst gives): see the module docs.
        fence(Ordering::SeqCst);
        let interval = cmd.interval.load(Ordering::Relaxed);
        let reset = cmd.reset.load(Ordering::Relaxed);
        let every = cmd.sample_every.load(Ordering::Relaxed);
        if reset != self.reset_ack.load(Ordering::Relaxed) {
            self.cumulative.clear();
            self.reset_ack.store(reset, Ordering::Relaxed);
        }
        let seen = self.seen.load(Ordering::Relaxed);
        self.seen.store(seen.wrapping_add(1), Ordering::Relaxed);
        let mut u = *u;
        if every > 1 && !seen.is_multiple_of(every) {
            u.latency_ms = None;
        }
        let g = self.current_gen.load(Ordering::Relaxed);
        if g != interval {
            self.previous.copy_from(&self.current);
            self.previous_gen.store(g, Ordering::Relaxed);
            self.current.clear();
            self.current_gen.store(interval, Ordering::Relaxed);
        }
        self.cumulative.add(&u, error);
        self.current.add(&u, error);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    /// A consistent reading (waits out a publication in progress).
    pub fn read(&self) -> Reading {
        let mut spins = 0u32;
        loop {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let r = Reading {
                    cumulative: self.cumulative.read(),
                    reset_ack: self.reset_ack.load(Ordering::Relaxed),
                    current: self.current.read(),
                    current_gen: self.current_gen.load(Ordering::Relaxed),
                    previous: self.previous.read(),
                    previous_gen: self.previous_gen.load(Ordering::Relaxed),
                    publications: s1 / 2,
                };
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return r;
                }
            }
            // A writer preempted mid-publication: let it run.
            spins += 1;
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// The blocks of one kind of agent: a fixed array, claimed by agents as they work (an
/// apply agent is an in-flight message handler, not a thread, so it claims a free block
/// for its publication rather than keeping one).
#[derive(Debug)]
pub struct Pool {
    kind: AgentKind,
    cmd: Commands,
    blocks: Box<[AgentBlock]>,
}

impl Pool {
    fn new(kind: AgentKind, size: usize) -> Self {
        Self {
            kind,
            cmd: Commands::default(),
            blocks: (0..size.max(1)).map(|_| AgentBlock::default()).collect(),
        }
    }

    /// Its kind.
    pub fn kind(&self) -> AgentKind {
        self.kind
    }

    /// How many blocks it has.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether it has none (never: a pool has at least one block).
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// A block only the caller writes until the claim is dropped. Takes the first free
    /// block; when more agents publish at once than the pool has blocks (sized for the
    /// configured concurrency, so not in practice) it waits for one to be released.
    pub fn claim(&self) -> Claim<'_> {
        let mut spins = 0u32;
        loop {
            for (i, b) in self.blocks.iter().enumerate() {
                if !b.owned.load(Ordering::Relaxed) && !b.owned.swap(true, Ordering::Acquire) {
                    if !b.used.load(Ordering::Relaxed) {
                        b.used.store(true, Ordering::Release);
                    }
                    return Claim {
                        pool: self,
                        block: b,
                        index: i,
                    };
                }
            }
            spins += 1;
            if spins.is_multiple_of(16) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
    }

    /// Readings of the blocks ever claimed, with their index.
    pub fn read(&self) -> Vec<(usize, Reading)> {
        self.blocks
            .iter()
            .enumerate()
            .filter(|(_, b)| b.used.load(Ordering::Acquire))
            .map(|(i, b)| (i, b.read()))
            .collect()
    }

    /// The block at `index` (tests, diagnostics).
    pub fn block(&self, index: usize) -> Option<&AgentBlock> {
        self.blocks.get(index)
    }
}

/// Exclusive write access to one block.
#[derive(Debug)]
pub struct Claim<'p> {
    pool: &'p Pool,
    block: &'p AgentBlock,
    index: usize,
}

impl Claim<'_> {
    /// Publishes one unit of work as one (a reader sees all of it or none of it).
    pub fn publish(&self, u: &Unit) {
        self.block.publish(&self.pool.cmd, u, false);
    }

    /// Publishes one failed unit (counted in `units` and `errors`).
    pub fn publish_error(&self, u: &Unit) {
        self.block.publish(&self.pool.cmd, u, true);
    }

    /// Which block of the pool it is.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.block.owned.store(false, Ordering::Release);
    }
}

/// Every pool of a deployment: what agents write and the monitor reads.
#[derive(Debug)]
pub struct Agents {
    pools: [Pool; 4],
    /// Whether agents publish at all (benchmarks compare on and off).
    enabled: AtomicBool,
}

impl Default for Agents {
    fn default() -> Self {
        Self::new(Self::DEFAULT_POOL)
    }
}

impl Agents {
    /// Blocks per pool by default (above the message service's default concurrency of 8
    /// and any copy worker count one machine runs).
    pub const DEFAULT_POOL: usize = 64;

    /// Pools of `per_pool` blocks each.
    pub fn new(per_pool: usize) -> Self {
        Self {
            pools: AgentKind::ALL.map(|k| Pool::new(k, per_pool)),
            enabled: AtomicBool::new(true),
        }
    }

    /// Whether agents publish (on unless [`Self::set_enabled`] turned it off).
    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// Turns publishing on or off (off: agents skip their blocks; the monitor then
    /// reports no agent figures; benchmarks measure monitoring's cost with it).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// The pool of `kind`.
    pub fn pool(&self, kind: AgentKind) -> &Pool {
        &self.pools[kind.index()]
    }

    /// Every pool.
    pub fn pools(&self) -> &[Pool; 4] {
        &self.pools
    }

    /// Command: interval `g` begins (units published from now on count in it). The
    /// caller reads the blocks after this returns.
    pub fn begin_interval(&self, g: u64) {
        for p in &self.pools {
            p.cmd.interval.store(g, Ordering::SeqCst);
        }
        fence(Ordering::SeqCst);
    }

    /// Command: cumulative figures start again from zero; returns the reset count that
    /// readings carry once their writer applied it.
    pub fn reset(&self) -> u64 {
        let mut n = 0;
        for p in &self.pools {
            n = p.cmd.reset.fetch_add(1, Ordering::SeqCst) + 1;
        }
        fence(Ordering::SeqCst);
        n
    }

    /// The reset count asked for last.
    pub fn resets(&self) -> u64 {
        self.pools[0].cmd.reset.load(Ordering::SeqCst)
    }

    /// Command: measure the latency of one unit in `every` (0 or 1: all of them).
    pub fn set_sampling(&self, every: u64) {
        for p in &self.pools {
            p.cmd.sample_every.store(every, Ordering::SeqCst);
        }
    }

    /// The sampling rate asked for.
    pub fn sampling(&self) -> u64 {
        self.pools[0].cmd.sample_every.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_is_two_cache_lines_aligned() {
        assert_eq!(std::mem::align_of::<AgentBlock>(), 128);
        assert_eq!(std::mem::size_of::<AgentBlock>() % 128, 0);
        let a = Agents::new(2);
        let p = a.pool(AgentKind::Apply);
        let (b0, b1) = (p.block(0).unwrap(), p.block(1).unwrap());
        let d = (b1 as *const AgentBlock as usize) - (b0 as *const AgentBlock as usize);
        assert!(d >= 128 && d.is_multiple_of(128), "{d}");
    }

    #[test]
    fn claims_are_exclusive_and_released() {
        let a = Agents::new(2);
        let p = a.pool(AgentKind::Ship);
        let c0 = p.claim();
        let c1 = p.claim();
        assert_ne!(c0.index(), c1.index());
        drop(c0);
        let c2 = p.claim();
        assert_eq!(c2.index(), 0);
    }

    #[test]
    fn a_unit_moves_every_figure_and_a_reset_applies_at_the_next_unit() {
        let a = Agents::new(1);
        let p = a.pool(AgentKind::Apply);
        let u = Unit {
            rows: 10,
            bytes: 100,
            files: 1,
            latency_ms: Some(7),
        };
        p.claim().publish(&u);
        p.claim().publish_error(&Unit::default());
        let r = p.read()[0].1;
        assert_eq!(r.cumulative.units, 2);
        assert_eq!(r.cumulative.errors, 1);
        assert_eq!(r.cumulative.rows, 10);
        assert_eq!(r.cumulative.latency_max_ms, 7);
        assert_eq!(r.publications, 2);
        let n = a.reset();
        assert_eq!(p.read()[0].1.reset_ack, 0);
        p.claim().publish(&u);
        let r = p.read()[0].1;
        assert_eq!(
            (r.reset_ack, r.cumulative.units, r.cumulative.rows),
            (n, 1, 10)
        );
    }

    #[test]
    fn sampling_measures_one_unit_in_n() {
        let a = Agents::new(1);
        a.set_sampling(4);
        let p = a.pool(AgentKind::Apply);
        for _ in 0..12 {
            p.claim().publish(&Unit {
                latency_ms: Some(5),
                ..Unit::default()
            });
        }
        let r = p.read()[0].1.cumulative;
        assert_eq!((r.units, r.latency_count), (12, 3));
    }
}
