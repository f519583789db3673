//! A model test of the writer's wake-up and of the outbox/close interplay, over every
//! interleaving.
//!
//! The connection's tasks share [`ConnState`] under one mutex, but what they do between two
//! critical sections runs without a common lock: the writer takes a batch (and, finding nothing,
//! marks itself idle), releases the lock, then waits on its `Notify`; a producer pushes under the
//! lock, releases it, then notifies if the push found the writer idle; a close or a failure is
//! applied under the lock and its wake-ups performed after; the writer hands bytes to the kernel
//! outside the lock and reports them under it. A lost wake-up, a frame written after the close
//! frame, a close frame the lifecycle does not know is out, or a frame neither written nor counted
//! lives in the gaps between those sections, where a test that takes one mutex for every step
//! (the outbox's stress tests) cannot go.
//!
//! Here each task is a list of steps; a step is one critical section (it calls the real
//! [`ConnState`] methods the net layer calls), one `Notify` operation, or one system call. The
//! explorer runs every order of the tasks' steps (depth first, replaying each schedule from the
//! start, as a stateless model checker does) and checks after every step and at the end of every
//! run:
//!
//! * `life.is_open() == outbox.is_open()`, and `buffered_data() <= buffered()`;
//! * no lost wake-up: when nothing can run any more, the writer is done, or waits with nothing to
//!   write (`buffered() == 0`);
//! * every accepted data frame was written whole or counted as dropped, exactly once;
//! * data frames reach the wire in the order they were pushed, at most one close frame is written
//!   and nothing after it, and a written close frame is known to the lifecycle (`CloseWritten`);
//! * the connection ends at most once, and in every run where both halves of the close happen.
//!
//! `Notify` is modelled as tokio documents it: `notify_one` wakes the waiting task, or stores one
//! permit that the next `notified()` consumes at once. The writer's `select!` on writability and
//! on its `Notify` may complete either way when both are ready, so both are explored. A test
//! checks that the explorer finds the lost wake-up when a notification is not stored
//! (`notify_waiters` semantics).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::core::config::MAX_IOVECS;
use crate::core::conn_state::{ConnState, Effects};
use crate::core::lifecycle::{CloseInfo, Failure, Input, State};
use crate::core::message::Frame;
use crate::core::metrics::Termination;
use crate::core::outbox::{Batched, Outcome};
use crate::core::policy::{Limits, Priority};
use crate::wire::frame::{encode, OpCode};

/// What the kernel does with the writer's next write.
#[derive(Clone, Copy, Debug)]
enum Kernel {
    /// Takes everything asked.
    All,
    /// Takes this many bytes at most.
    Part(usize),
    /// Takes nothing (`WouldBlock`).
    Block,
}

/// One step of a scripted task (a producer, JavaScript, the reader, the fan-out task).
#[derive(Clone, Debug)]
enum Op {
    /// Push a data frame with this tag (its first payload byte).
    Push(u8),
    /// Feed the lifecycle.
    In(Input),
}

#[derive(Clone, Debug)]
struct Script {
    name: &'static str,
    ops: Vec<Op>,
}

#[derive(Clone, Debug)]
struct Scenario {
    scripts: Vec<Script>,
    kernel: Vec<Kernel>,
    /// `Notify::notify_one` stores a permit when nobody waits (tokio); false models a
    /// notification that only reaches a task already waiting, to show the explorer finds it.
    stores_permit: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Pc {
    /// Top of the loop with the batch done: take a new one under the lock.
    Take,
    /// Nothing taken: wait on the `Notify` (or the end).
    Wait,
    /// Blocked in `notified()`: runnable again once notified or killed.
    Waiting,
    /// Write what is left of the batch (one system call).
    Write,
    /// The kernel took `n` bytes: report them under the lock.
    Account(usize),
    /// The kernel took nothing: tell the lifecycle (`WriteBlocked`) under the lock.
    Blocked,
    /// Perform what the last locked step returned (outside the lock), then go on at `next`.
    Perform(Effects, Box<Pc>),
    /// In `select!` on writability and the `Notify`.
    WaitWritable,
    Done,
}

struct Writer {
    pc: Pc,
    batch: Vec<Batched>,
    done: usize,
    offset: usize,
    close_in_batch: bool,
    kernel: VecDeque<Kernel>,
}

struct Task {
    script: Script,
    next: usize,
    /// Effects of the last locked step, to perform before the next op.
    pending: Option<Effects>,
}

/// A move the explorer can choose: a task's next step, or one of the ways the writer's
/// `select!` can complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Move {
    Writer,
    /// `select!` completes by the `Notify` (consuming the permit) rather than writability.
    WriterByNotify,
    Task(usize),
}

/// What was written, in order: data tags and close frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wire {
    Data(u8),
    Close,
}

struct World {
    s: ConnState,
    w: Writer,
    tasks: Vec<Task>,
    stores_permit: bool,
    permit: bool,
    killed: bool,
    now: Instant,
    wire: Vec<Wire>,
    accepted: Vec<u8>,
    /// Data frames counted as dropped (by failures, the end, the writer's unfinished batch).
    dropped: usize,
    ends: usize,
    /// Every step so far, for the report of a failing run.
    trace: Vec<String>,
}

fn data(tag: u8) -> Frame {
    Frame::new(encode(OpCode::Binary, &[tag; 8]))
}

fn tag(f: &Frame) -> Option<u8> {
    // Server frames: 2-byte header; data frames carry 8 bytes of their tag.
    (f.bytes[0] & 0x0f != OpCode::Close as u8).then(|| f.bytes[2])
}

impl World {
    fn new(sc: &Scenario) -> Self {
        let limits = Limits {
            low_priority_limit: 1 << 20,
            max_buffered_amount: 1 << 20,
            high_water_mark: 1 << 19,
            low_water_mark: 1 << 18,
            ..Limits::default()
        };
        Self {
            s: ConnState::new(limits, Duration::from_secs(5), Duration::from_secs(1)),
            w: Writer {
                pc: Pc::Take,
                batch: Vec::new(),
                done: 0,
                offset: 0,
                close_in_batch: false,
                kernel: sc.kernel.iter().copied().collect(),
            },
            tasks: sc
                .scripts
                .iter()
                .map(|s| Task {
                    script: s.clone(),
                    next: 0,
                    pending: None,
                })
                .collect(),
            stores_permit: sc.stores_permit,
            permit: false,
            killed: false,
            now: Instant::now(),
            wire: Vec::new(),
            accepted: Vec::new(),
            dropped: 0,
            ends: 0,
            trace: Vec::new(),
        }
    }

    fn moves(&self) -> Vec<Move> {
        let mut m = Vec::new();
        match self.w.pc {
            Pc::Done => {}
            Pc::Waiting if !self.killed => {}
            Pc::WaitWritable => {
                m.push(Move::Writer);
                if self.permit {
                    m.push(Move::WriterByNotify);
                }
            }
            _ => m.push(Move::Writer),
        }
        for (i, t) in self.tasks.iter().enumerate() {
            if t.pending.is_some() || t.next < t.script.ops.len() {
                m.push(Move::Task(i));
            }
        }
        m
    }

    /// `notify_one` on the writer's `Notify`.
    fn notify_writer(&mut self) {
        if self.w.pc == Pc::Waiting {
            self.w.pc = Pc::Take;
        } else if self.stores_permit {
            self.permit = true;
        }
    }

    /// What the net layer does outside the lock (`Conn::perform`), as far as the writer sees it.
    fn perform(&mut self, e: &Effects) {
        if e.wake_writer {
            self.notify_writer();
        }
        if e.end.is_some() {
            // `kill`: the writer's `select!` returns, its next write fails.
            self.killed = true;
        }
    }

    /// Feeds the lifecycle under the lock, recording what it dropped and whether it ended.
    fn on(&mut self, input: Input) -> Effects {
        let e = self.s.on(input, self.now);
        self.dropped += e.drops.total() as usize;
        self.ends += e.end.is_some() as usize;
        e
    }

    fn step(&mut self, mv: Move) {
        let who = match mv {
            Move::Task(i) => self.tasks[i].script.name,
            Move::Writer => "writer",
            Move::WriterByNotify => "writer (by notify)",
        };
        self.trace.push(format!("{who} at {:?}", self.w.pc));
        match mv {
            Move::Task(i) => self.task_step(i),
            Move::Writer => self.writer_step(false),
            Move::WriterByNotify => self.writer_step(true),
        }
    }

    fn task_step(&mut self, i: usize) {
        if let Some(e) = self.tasks[i].pending.take() {
            self.perform(&e);
            return;
        }
        let op = self.tasks[i].script.ops[self.tasks[i].next].clone();
        self.tasks[i].next += 1;
        let e = match op {
            Op::Push(t) => {
                let p = self.s.outbox.push(data(t), Priority::Normal);
                match p.outcome {
                    Outcome::Queued => self.accepted.push(t),
                    Outcome::Closed => {}
                    o => panic!("unexpected {o:?}"),
                }
                Effects {
                    wake_writer: p.wake,
                    ..Effects::default()
                }
            }
            Op::In(input) => self.on(input),
        };
        if e.wake_writer || e.end.is_some() {
            self.tasks[i].pending = Some(e);
        }
    }

    /// The data frames of the batch not written whole: dropped when the writer stops.
    fn drop_rest(&mut self) {
        let rest = &self.w.batch[self.w.done.min(self.w.batch.len())..];
        self.dropped += rest.iter().filter(|b| b.priority.is_some()).count();
        self.w.batch.clear();
        self.w.done = 0;
        self.w.pc = Pc::Done;
    }

    fn writer_step(&mut self, by_notify: bool) {
        let pc = std::mem::replace(&mut self.w.pc, Pc::Done);
        self.w.pc = match pc {
            Pc::Take => {
                self.w.batch.clear();
                self.w.done = 0;
                self.w.offset = 0;
                let t = self.s.take_batch(
                    &mut self.w.batch,
                    MAX_IOVECS,
                    usize::MAX,
                    &mut self.now.into(),
                );
                self.w.close_in_batch = t.close;
                if self.w.batch.is_empty() {
                    Pc::Wait
                } else {
                    Pc::Write
                }
            }
            Pc::Wait | Pc::Waiting => {
                if self.killed {
                    self.drop_rest();
                    return;
                }
                if std::mem::take(&mut self.permit) {
                    Pc::Take
                } else {
                    Pc::Waiting
                }
            }
            Pc::Write => {
                if self.killed {
                    // The socket is shut down: the write fails and the writer stops.
                    self.drop_rest();
                    return;
                }
                let left: usize = self.w.batch[self.w.done..]
                    .iter()
                    .map(|b| b.frame.len())
                    .sum::<usize>()
                    - self.w.offset;
                match self.w.kernel.pop_front().unwrap_or(Kernel::All) {
                    Kernel::Block => Pc::Blocked,
                    k => {
                        let n = match k {
                            Kernel::Part(p) => p.min(left),
                            _ => left,
                        };
                        let mut rest = n;
                        while rest > 0 {
                            let b = &self.w.batch[self.w.done];
                            let need = b.frame.len() - self.w.offset;
                            if rest >= need {
                                rest -= need;
                                self.wire.push(match tag(&b.frame) {
                                    Some(t) => Wire::Data(t),
                                    None => Wire::Close,
                                });
                                self.w.done += 1;
                                self.w.offset = 0;
                            } else {
                                self.w.offset += rest;
                                rest = 0;
                            }
                        }
                        Pc::Account(n)
                    }
                }
            }
            Pc::Account(n) => {
                let closed = self.w.done == self.w.batch.len() && self.w.close_in_batch;
                self.s.outbox.written(n);
                let front = self.w.batch[self.w.done..]
                    .iter()
                    .find(|b| b.priority.is_some())
                    .map(|b| b.frame.born);
                self.s.outbox.in_flight_front(front);
                if closed {
                    let e = self.on(Input::CloseWritten);
                    Pc::Perform(e, Box::new(Pc::Done))
                } else if self.w.done == self.w.batch.len() {
                    Pc::Take
                } else {
                    Pc::Write
                }
            }
            Pc::Blocked => {
                let e = self.on(Input::WriteBlocked);
                if e.end.is_some() {
                    self.perform(&e);
                    self.drop_rest();
                    return;
                }
                Pc::WaitWritable
            }
            Pc::WaitWritable => {
                if self.killed {
                    self.drop_rest();
                    return;
                }
                if by_notify {
                    self.permit = false;
                }
                Pc::Write
            }
            Pc::Perform(e, next) => {
                self.perform(&e);
                if *next == Pc::Done {
                    // After its close frame the writer only waits for the end.
                    self.w.batch.clear();
                    self.w.done = 0;
                }
                *next
            }
            Pc::Done => Pc::Done,
        };
    }

    fn check_step(&self) -> Result<(), String> {
        if self.s.life().is_open() != self.s.outbox.is_open() {
            return Err("lifecycle and outbox disagree on open".into());
        }
        let taken = match self.s.life().state() {
            State::Closing { taken } | State::Failing { taken, .. } => Some(taken),
            _ => None,
        };
        if taken.is_some_and(|t| t != self.s.outbox.close_taken()) {
            return Err(format!(
                "lifecycle at {:?}, outbox close taken: {}",
                self.s.life().state(),
                self.s.outbox.close_taken()
            ));
        }
        if self.s.buffered_data() > self.s.outbox.buffered() {
            return Err("buffered_data above buffered".into());
        }
        if self.ends > 1 {
            return Err("ended twice".into());
        }
        let closes = self.wire.iter().filter(|w| **w == Wire::Close).count();
        if closes > 1 || (closes == 1 && self.wire.last() != Some(&Wire::Close)) {
            return Err(format!("something after the close frame: {:?}", self.wire));
        }
        Ok(())
    }

    fn check_end(&self, must_end: bool) -> Result<(), String> {
        match self.w.pc {
            Pc::Done => {}
            Pc::Waiting if self.s.outbox.buffered() == 0 => {}
            Pc::Waiting => {
                return Err(format!(
                    "lost wake-up: the writer waits with {} bytes queued",
                    self.s.outbox.buffered()
                ))
            }
            ref pc => return Err(format!("writer stuck at {pc:?}")),
        }
        let written: Vec<u8> = self
            .wire
            .iter()
            .filter_map(|w| match w {
                Wire::Data(t) => Some(*t),
                Wire::Close => None,
            })
            .collect();
        if written.len() + self.dropped != self.accepted.len() {
            return Err(format!(
                "accepted {:?}, written {written:?}, dropped {}",
                self.accepted, self.dropped
            ));
        }
        // Tags increase along each task's pushes, and each task uses its own range.
        for w in written.windows(2) {
            if w[0] / 16 == w[1] / 16 && w[0] >= w[1] {
                return Err(format!("reordered: {written:?}"));
            }
        }
        if self.wire.last() == Some(&Wire::Close) {
            let known = matches!(
                self.s.life().state(),
                State::AwaitingPeer | State::HalfClosed | State::Ended { wrote_close: true }
            );
            if !known {
                return Err(format!(
                    "close frame out, lifecycle at {:?}",
                    self.s.life().state()
                ));
            }
        }
        if must_end && self.ends != 1 {
            return Err(format!("not ended: {:?}", self.s.life().state()));
        }
        Ok(())
    }
}

/// Runs every interleaving of `sc`; returns how many, or the first failing run with its trace.
/// `check` adds the scenario's own assertions on each finished run.
fn explore(
    sc: &Scenario,
    must_end: bool,
    check: &dyn Fn(&World) -> Result<(), String>,
) -> Result<usize, String> {
    // The choice made at each depth and how many there were.
    let mut path: Vec<(usize, usize)> = Vec::new();
    let mut runs = 0;
    loop {
        let mut w = World::new(sc);
        let mut depth = 0;
        loop {
            let moves = w.moves();
            if moves.is_empty() {
                break;
            }
            if depth == path.len() {
                path.push((0, moves.len()));
            }
            let (choice, n) = path[depth];
            assert_eq!(n, moves.len(), "replay diverged");
            w.step(moves[choice]);
            if let Err(e) = w.check_step() {
                return Err(format!("{e}\n  after {:?}", w.trace));
            }
            depth += 1;
            assert!(depth < 10_000, "a run that does not end");
        }
        if let Err(e) = w.check_end(must_end).and_then(|_| check(&w)) {
            return Err(format!("{e}\n  after {:?}", w.trace));
        }
        runs += 1;
        path.truncate(depth);
        while let Some((c, n)) = path.pop() {
            if c + 1 < n {
                path.push((c + 1, n));
                break;
            }
        }
        if path.is_empty() {
            return Ok(runs);
        }
    }
}

/// [`explore`], failing the test with the trace of a failing run, and checking that at least
/// `min_runs` interleavings were run (the scenario did not collapse to a few orders).
fn holds(
    sc: &Scenario,
    must_end: bool,
    min_runs: usize,
    check: &dyn Fn(&World) -> Result<(), String>,
) {
    let runs = explore(sc, must_end, check).unwrap_or_else(|e| panic!("{e}"));
    assert!(runs >= min_runs, "only {runs} interleavings");
}

fn script(name: &'static str, ops: Vec<Op>) -> Script {
    Script { name, ops }
}

fn ours() -> CloseInfo {
    CloseInfo::new(1000, "bye")
}

fn scenario(scripts: Vec<Script>, kernel: Vec<Kernel>) -> Scenario {
    Scenario {
        scripts,
        kernel,
        stores_permit: true,
    }
}

fn ok(_: &World) -> Result<(), String> {
    Ok(())
}

/// Two producers and a graceful close against the writer: every frame accepted before the close
/// is written ahead of it, none is lost, the writer never sleeps on queued bytes.
#[test]
fn pushes_and_a_close_against_the_writer() {
    let sc = scenario(
        vec![
            script("fanout", vec![Op::Push(1), Op::Push(2)]),
            script("js", vec![Op::Push(17), Op::In(Input::Close(ours()))]),
        ],
        vec![],
    );
    holds(&sc, false, 10_000, &|w| {
        if w.dropped != 0 {
            return Err("a graceful close dropped data".into());
        }
        if w.wire.last() != Some(&Wire::Close) {
            return Err(format!("no close frame last: {:?}", w.wire));
        }
        Ok(())
    });
}

/// The same with a kernel that takes a few bytes at a time: frames cut across writes.
#[test]
fn partial_writes_and_a_close() {
    let sc = scenario(
        vec![
            script("fanout", vec![Op::Push(1), Op::Push(2)]),
            script("js", vec![Op::In(Input::Close(ours()))]),
        ],
        vec![Kernel::Part(3), Kernel::Part(7), Kernel::Part(11)],
    );
    holds(&sc, false, 1_000, &|w| {
        (w.wire.last() == Some(&Wire::Close))
            .then_some(())
            .ok_or_else(|| format!("{:?}", w.wire))
    });
}

/// An overflow failure from the fan-out task while JavaScript closes and the kernel is full
/// at first: either the failure's close frame goes out first, or the connection ends at once
/// (urgent), never both, and every frame is written or counted.
#[test]
fn an_urgent_failure_against_a_close_and_a_full_kernel() {
    let fail = Input::Fail {
        close: CloseInfo::new(1008, "send buffer limit exceeded"),
        why: Failure::Overflow,
    };
    let sc = scenario(
        vec![
            script("fanout", vec![Op::Push(1), Op::In(fail)]),
            script("js", vec![Op::Push(17), Op::In(Input::Close(ours()))]),
        ],
        vec![Kernel::Block],
    );
    holds(&sc, false, 10_000, &|w| {
        if w.ends == 1 && w.s.life().termination() != Some(Termination::Overflow) {
            return Err(format!("ended by {:?}", w.s.life().termination()));
        }
        Ok(())
    });
}

/// The peer closes first (not deferred) and half-closes at once, while JavaScript still sends:
/// the reply goes out after what was accepted, then the connection ends, in every order.
#[test]
fn a_peer_close_and_its_fin_against_sends() {
    let sc = scenario(
        vec![
            script(
                "reader",
                vec![
                    Op::In(Input::PeerClose {
                        close: CloseInfo::new(1000, ""),
                        defer: false,
                    }),
                    Op::In(Input::Eof),
                ],
            ),
            script("js", vec![Op::Push(1), Op::Push(2)]),
        ],
        vec![],
    );
    holds(&sc, true, 1_000, &|w| {
        if w.dropped != 0 || w.s.life().termination().is_some() {
            return Err("the close handshake lost data or counted a cause".into());
        }
        Ok(())
    });
}

/// The peer closes first while JavaScript listens: JavaScript's answer to the last message goes
/// out before the reply it then allows (`AnswerClose`), whatever the fan-out does meanwhile.
#[test]
fn a_deferred_reply_goes_after_javascripts_answer() {
    let sc = scenario(
        vec![
            script(
                "reader",
                vec![Op::In(Input::PeerClose {
                    close: CloseInfo::new(4000, "done"),
                    defer: true,
                })],
            ),
            script("js", vec![Op::Push(1), Op::In(Input::AnswerClose)]),
            script("fanout", vec![Op::Push(17)]),
        ],
        vec![],
    );
    holds(&sc, false, 10_000, &|w| {
        // The reader's close may come after JavaScript's answer attempt (then nothing is
        // answered and the peer's close waits): only check what was written.
        if w.wire.last() == Some(&Wire::Close) && !w.wire.contains(&Wire::Data(1)) {
            return Err(format!(
                "the reply overtook JavaScript's answer: {:?}",
                w.wire
            ));
        }
        Ok(())
    });
}

/// `terminate()` against a writer in the middle of a batch: the end happens once, and frames
/// taken but not written whole are counted as dropped with the queued ones.
#[test]
fn terminate_against_a_writer_mid_batch() {
    let sc = scenario(
        vec![
            script("fanout", vec![Op::Push(1), Op::Push(2), Op::Push(3)]),
            script("js", vec![Op::In(Input::End(Some(Termination::Requested)))]),
        ],
        vec![Kernel::Part(5), Kernel::Block, Kernel::Part(12)],
    );
    holds(&sc, true, 10_000, &ok);
}

/// A protocol error found by the reader against our own close and the writer.
#[test]
fn a_protocol_failure_against_our_close() {
    let sc = scenario(
        vec![
            script("js", vec![Op::Push(1), Op::In(Input::Close(ours()))]),
            script(
                "reader",
                vec![
                    Op::In(Input::Fail {
                        close: CloseInfo::new(1002, "bad frame"),
                        why: Failure::Protocol,
                    }),
                    Op::In(Input::Eof),
                ],
            ),
        ],
        vec![],
    );
    holds(&sc, true, 1_000, &|w| {
        (w.s.life().termination() == Some(Termination::Protocol))
            .then_some(())
            .ok_or_else(|| "the failure is the cause".to_string())
    });
}

/// The explorer is not blind: with a notification that reaches only a task already waiting
/// (`notify_waiters`), a push between the writer's empty take and its wait is a lost wake-up,
/// and some interleaving shows it.
#[test]
fn the_explorer_finds_a_lost_wake_up() {
    let mut sc = scenario(vec![script("fanout", vec![Op::Push(1)])], vec![]);
    sc.stores_permit = false;
    let e = explore(&sc, false, &ok).expect_err("a lost wake-up must be found");
    assert!(e.starts_with("lost wake-up"), "{e}");
    sc.stores_permit = true;
    explore(&sc, false, &ok).unwrap_or_else(|e| panic!("{e}"));
}
