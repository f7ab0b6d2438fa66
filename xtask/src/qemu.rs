//! QEMU command lines for the boards, and a runner that streams the serial
//! console, watches it for lines that end a run, and enforces time limits.

use std::io::{self, BufRead, BufReader, IsTerminal, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-aarch64";
/// Asks the hypervisor to end QEMU through semihosting when it powers off.
pub const DEFAULT_BOOTARGS: &str = "loglevel=info semihosting-exit";
/// Where QEMU's `-kernel` puts the image on virt (RAM base + text_offset).
pub const VIRT_LOAD_ADDR: u64 = 0x4008_0000;
/// Where QEMU's `-kernel` and the firmware put the image on the Pi 4.
pub const RASPI_LOAD_ADDR: u64 = 0x8_0000;
/// The Raspberry Pi 4 has four cores and QEMU's raspi4b always models them.
pub const RASPI_CPUS: u32 = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Board {
    Virt,
    Raspi4b,
}

impl Board {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "virt" => Some(Self::Virt),
            "raspi4b" => Some(Self::Raspi4b),
            _ => None,
        }
    }

    pub fn load_addr(self) -> u64 {
        match self {
            Self::Virt => VIRT_LOAD_ADDR,
            Self::Raspi4b => RASPI_LOAD_ADDR,
        }
    }
}

/// One machine to boot the image on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Machine {
    pub board: Board,
    /// GIC version on virt: 2, 3 or 4.
    pub gic: u8,
    pub smp: u32,
    /// RAM in MiB (virt only).
    pub mem_mib: u32,
    /// virt's `virtualization=on`: without it the image starts at EL1.
    pub virtualization: bool,
    /// The hypervisor's command line (`--host-append`).
    pub append: String,
    /// Wait for gdb on port 1234 before the first instruction.
    pub gdb: bool,
    /// `-cpu` on virt (raspi4b's is always its Cortex-A72).
    pub cpu: &'static str,
}

impl Default for Machine {
    fn default() -> Self {
        Self {
            board: Board::Virt,
            gic: 3,
            smp: 4,
            mem_mib: 1024,
            virtualization: true,
            append: DEFAULT_BOOTARGS.into(),
            gdb: false,
            cpu: "max",
        }
    }
}

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Arguments every run shares: serial 0 on stdio, no display, no monitor,
/// semihosting for the exit status.
fn console_args() -> Vec<String> {
    ["-display", "none", "-monitor", "none", "-serial", "stdio"].iter().map(|s| s.to_string()).collect()
}

fn semihosting_args() -> Vec<String> {
    vec!["-semihosting-config".into(), "enable=on,target=native".into()]
}

impl Machine {
    /// `-M` and the CPU, core count and memory options for virt.
    pub fn virt_machine_args(&self, extra_machine_opts: &str) -> Vec<String> {
        let virt = if self.virtualization { "virtualization=on," } else { "" };
        vec![
            "-M".into(),
            format!("virt,{virt}gic-version={}{extra_machine_opts}", self.gic),
            "-cpu".into(),
            self.cpu.into(),
            "-smp".into(),
            self.smp.to_string(),
            "-m".into(),
            self.mem_mib.to_string(),
            // Without this virt adds a virtio NIC whose option ROM a minimal
            // QEMU install lacks; the hypervisor has no use for it anyway.
            "-nic".into(),
            "none".into(),
        ]
    }

    /// QEMU's arguments to boot `image` (`dtb` is needed on raspi4b; on
    /// virt QEMU makes its own without it).
    pub fn args(&self, image: &Path, dtb: Option<&Path>) -> Vec<String> {
        self.boot_args(image, dtb, None)
    }

    /// As [`Machine::args`], with `initrd` handed to the image as its initrd
    /// (the guest bundle).
    pub fn boot_args(&self, image: &Path, dtb: Option<&Path>, initrd: Option<&Path>) -> Vec<String> {
        let mut a = match self.board {
            Board::Virt => self.virt_machine_args(""),
            // One host thread per CPU, as on virt: like the Pi's four cores,
            // they run at once. Single-threaded TCG runs them in turn, each
            // until an interrupt kicks it or for 100 ms (QEMU's
            // TCG_KICK_PERIOD), so CPUs spinning with no interrupt (a
            // dedicated vCPU takes no host tick) cannot share 200 ms fairly:
            // the selftest guest's `progress` fails that way even bare on
            // QEMU.
            Board::Raspi4b => vec!["-M".into(), "raspi4b".into(), "-accel".into(), "tcg,thread=multi".into()],
        };
        if let Some(dtb) = dtb {
            a.extend(["-dtb".into(), dtb.display().to_string()]);
        }
        a.extend(["-kernel".into(), image.display().to_string(), "-append".into(), self.append.clone()]);
        if let Some(initrd) = initrd {
            a.extend(["-initrd".into(), initrd.display().to_string()]);
        }
        match self.board {
            Board::Virt => a.extend(console_args()),
            // Serial 0 is the PL011 and serial 1 the mini-UART, which the Pi's
            // device tree names as the console (stdout-path = serial1). Both
            // go to stdio through a multiplexer, so the output shows
            // whichever the hypervisor writes to.
            Board::Raspi4b => a.extend(strs(&[
                "-display",
                "none",
                "-monitor",
                "none",
                "-chardev",
                "stdio,id=console,mux=on,signal=on",
                "-serial",
                "chardev:console",
                "-serial",
                "chardev:console",
            ])),
        }
        a.extend(semihosting_args());
        if self.gdb {
            a.extend(["-s".into(), "-S".into()]);
        }
        a
    }
}

/// Arguments for booting without `-kernel`: a firmware stub at address 0 that
/// jumps to the image with a device tree address in x0, both placed in RAM by
/// QEMU's generic loader.
pub fn stub_boot_args(
    machine: &Machine,
    stub: &Path,
    image: &Path,
    image_addr: u64,
    dtb: &Path,
    dtb_addr: u64,
) -> Vec<String> {
    let mut a = machine.virt_machine_args("");
    a.extend([
        "-bios".into(),
        stub.display().to_string(),
        "-device".into(),
        format!("loader,file={},addr={image_addr:#x},force-raw=on", image.display()),
        "-device".into(),
        format!("loader,file={},addr={dtb_addr:#x},force-raw=on", dtb.display()),
    ]);
    a.extend(console_args());
    a.extend(semihosting_args());
    a
}

/// How to run QEMU and when to stop it.
pub struct Watch {
    /// Copy the serial output and QEMU's messages to our stdout and stderr.
    pub echo: bool,
    /// Give QEMU our stdin (so a person can type to the console).
    pub interactive: bool,
    pub timeout: Option<Duration>,
    /// Which console lines end the run: for such a line, how long QEMU may
    /// stay silent afterwards before it is stopped (the shortest of the
    /// periods of all such lines seen applies).
    pub stop_on: fn(&str) -> Option<Duration>,
    /// A watchdog on a guest's progress lines, if any.
    pub progress: Option<Progress>,
}

/// What a console line says about the guest a [`Progress`] watchdog watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Beat {
    /// A progress line: the guest is alive.
    Alive,
    /// The guest has finished: the watchdog stands down.
    Finished,
    Other,
}

/// Stops QEMU when `stall` passes, from the start or the last progress
/// line, without a progress line, unless the guest has finished.
#[derive(Clone, Copy)]
pub struct Progress {
    pub classify: fn(&str) -> Beat,
    pub stall: Duration,
    /// Print each progress line as it comes.
    pub print: bool,
}

/// How a QEMU run ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// QEMU exited by itself with this code (`None`: killed by a signal).
    Exited(Option<i32>),
    /// We stopped it after a `stop_on` line.
    Stopped,
    /// We stopped it at the time limit.
    TimedOut,
}

#[derive(Debug)]
pub struct Outcome {
    pub end: End,
    /// The serial console, line by line (carriage returns removed).
    pub output: String,
    /// QEMU's own messages.
    pub stderr: String,
    /// Stopped by the [`Progress`] watchdog: the last progress line (empty
    /// if none came).
    pub stalled: Option<String>,
}

impl Outcome {
    /// The last `n` lines of the console and QEMU's messages, for a report.
    pub fn tail(&self, n: usize) -> String {
        let mut lines: Vec<String> = self.output.lines().map(String::from).collect();
        lines.extend(self.stderr.lines().filter(|l| !quiet_stderr(l)).map(|l| format!("[qemu stderr] {l}")));
        let skip = lines.len().saturating_sub(n);
        lines[skip..].join("\n")
    }
}

enum Event {
    Line(String),
    Err(String),
}

/// QEMU messages that are noise: the raspi4b model disabling devices it does
/// not emulate, and its note when we stop it.
fn quiet_stderr(line: &str) -> bool {
    line.contains("warning: bcm2711 dtc:") || line.contains("terminating on signal")
}

fn pump_stdout(mut src: impl Read, echo: bool, tx: mpsc::Sender<Event>) {
    // QEMU puts a terminal on its stdin into raw mode, where a bare "\n" does
    // not return the carriage; add the "\r" when echoing to a terminal.
    let crlf = echo && io::stdout().is_terminal();
    let mut buf = [0u8; 4096];
    let mut line: Vec<u8> = Vec::new();
    let mut prev = 0u8;
    let send = |line: &mut Vec<u8>| {
        while line.last() == Some(&b'\r') {
            line.pop();
        }
        let text = String::from_utf8_lossy(line).replace('\r', "");
        line.clear();
        tx.send(Event::Line(text)).is_ok()
    };
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let chunk = &buf[..n];
        if echo {
            let mut out = io::stdout().lock();
            if crlf {
                let mut conv = Vec::with_capacity(n + 16);
                for &b in chunk {
                    if b == b'\n' && prev != b'\r' {
                        conv.push(b'\r');
                    }
                    conv.push(b);
                    prev = b;
                }
                let _ = out.write_all(&conv);
            } else {
                let _ = out.write_all(chunk);
            }
            let _ = out.flush();
        }
        for &b in chunk {
            if b == b'\n' {
                if !send(&mut line) {
                    return;
                }
            } else {
                line.push(b);
            }
        }
    }
    if !line.is_empty() {
        send(&mut line);
    }
}

fn pump_stderr(src: impl Read, echo: bool, tx: mpsc::Sender<Event>) {
    for line in BufReader::new(src).lines() {
        let Ok(line) = line else { break };
        if echo && !quiet_stderr(&line) {
            eprintln!("{line}");
        }
        if tx.send(Event::Err(line)).is_err() {
            break;
        }
    }
}

/// Stops QEMU: SIGTERM first, so it restores the terminal, then SIGKILL.
fn stop(child: &mut Child) {
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).stderr(Stdio::null()).status();
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs QEMU with `args` under `watch`.
///
/// # Errors
/// QEMU could not be started.
pub fn run(args: &[String], watch: &Watch) -> io::Result<Outcome> {
    run_program(QEMU, args, watch)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot start {QEMU} ({e}): run scripts/setup")))
}

/// Runs `program` with `args` under `watch`, reading its stdout as a console.
///
/// # Errors
/// The program could not be started.
pub fn run_program(program: &str, args: &[String], watch: &Watch) -> io::Result<Outcome> {
    let start = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .stdin(if watch.interactive { Stdio::inherit() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().unwrap();
    let err = child.stderr.take().unwrap();
    let echo = watch.echo;
    let tx2 = tx.clone();
    let _readers =
        [thread::spawn(move || pump_stdout(out, echo, tx)), thread::spawn(move || pump_stderr(err, echo, tx2))];

    let mut output = String::new();
    let mut stderr = String::new();
    let mut take = |ev: Event| match ev {
        Event::Line(l) => {
            output.push_str(&l);
            output.push('\n');
            Some(l)
        }
        Event::Err(l) => {
            stderr.push_str(&l);
            stderr.push('\n');
            None
        }
    };

    let mut last_output = Instant::now();
    let mut grace: Option<Duration> = None;
    let mut last_beat = (Instant::now(), String::new());
    let mut watching = watch.progress.is_some();
    let mut stalled = None;
    let end = loop {
        if let Some(status) = child.try_wait()? {
            break End::Exited(status.code());
        }
        let now = Instant::now();
        if watch.timeout.is_some_and(|t| now >= start + t) {
            stop(&mut child);
            break End::TimedOut;
        }
        if grace.is_some_and(|g| now >= last_output + g) {
            stop(&mut child);
            break End::Stopped;
        }
        if watch.progress.is_some_and(|p| watching && now >= last_beat.0 + p.stall) {
            stop(&mut child);
            stalled = Some(std::mem::take(&mut last_beat.1));
            break End::Stopped;
        }
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(ev) => {
                if let Some(line) = take(ev) {
                    last_output = Instant::now();
                    if let Some(g) = (watch.stop_on)(&line) {
                        grace = Some(grace.map_or(g, |old| old.min(g)));
                    }
                    if let Some(p) = watch.progress.filter(|_| watching) {
                        match (p.classify)(&line) {
                            Beat::Alive => {
                                if p.print && !watch.echo {
                                    println!("{line}");
                                }
                                last_beat = (last_output, line);
                            }
                            Beat::Finished => watching = false,
                            Beat::Other => {}
                        }
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            // Both pipes closed: QEMU is gone or about to be.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let status = child.wait()?;
                break End::Exited(status.code());
            }
        }
    };
    // Collect what the pipes still hold. Don't wait on the reader threads
    // forever: a process QEMU left behind could keep a pipe open.
    let deadline = Instant::now() + Duration::from_secs(2);
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(ev) => {
                take(ev);
            }
            Err(_) => break,
        }
    }
    Ok(Outcome { end, output, stderr, stalled })
}

/// The exit status of `cargo xtask run` and a message to print, from how QEMU
/// ended and the hypervisor's power-off status (if it printed one).
pub fn run_status(end: End, power_off: Option<i32>, timeout_secs: Option<u64>) -> (i32, Option<String>) {
    match (end, power_off) {
        (End::TimedOut, _) => (124, Some(format!("timeout after {}s", timeout_secs.unwrap_or(0)))),
        (End::Exited(Some(code)), Some(0)) if code != 0 => {
            (code, Some(format!("QEMU exited with status {code} after the hypervisor powered off with status 0")))
        }
        (_, Some(n)) => (n, None),
        (End::Exited(code), None) => {
            let how = code.map_or("was killed by a signal".to_string(), |c| format!("exited with status {c}"));
            (2, Some(format!("hypervisor ended without a power-off line (QEMU {how})")))
        }
        (End::Stopped, None) => (2, Some("hypervisor ended without a power-off line".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn joined(args: &[String]) -> String {
        args.join(" ")
    }

    #[test]
    fn virt_command_line() {
        let m = Machine { gic: 2, smp: 2, mem_mib: 512, ..Machine::default() };
        let a = joined(&m.args(Path::new("target/ferrovisor.img"), None));
        assert!(a.starts_with("-M virt,virtualization=on,gic-version=2 -cpu max -smp 2 -m 512 -nic none "), "{a}");
        assert!(a.contains("-kernel target/ferrovisor.img -append loglevel=info semihosting-exit"), "{a}");
        assert!(a.contains("-serial stdio") && a.contains("-semihosting-config enable=on,target=native"), "{a}");
        assert!(!a.contains("-S"), "{a}");
        let a72 = Machine { cpu: "cortex-a72", virtualization: false, ..Machine::default() };
        assert!(joined(&a72.args(Path::new("i"), None)).starts_with("-M virt,gic-version=3 -cpu cortex-a72 -smp 4 "));
        let el1 = Machine { virtualization: false, gdb: true, ..Machine::default() };
        let a = joined(&el1.args(Path::new("i"), None));
        assert!(a.starts_with("-M virt,gic-version=3 "), "{a}");
        assert!(a.ends_with(" -s -S"), "{a}");
    }

    #[test]
    fn guest_command_line() {
        let m = Machine::default();
        let a = joined(&m.boot_args(Path::new("f.img"), Some(Path::new("g.dtb")), Some(Path::new("g.cpio"))));
        assert!(
            a.contains(" -nic none -dtb g.dtb -kernel f.img -append loglevel=info semihosting-exit -initrd g.cpio "),
            "{a}"
        );
        let pi = Machine { board: Board::Raspi4b, ..Machine::default() };
        let a = joined(&pi.boot_args(Path::new("f.img"), Some(Path::new("g.dtb")), Some(Path::new("g.cpio"))));
        assert!(a.starts_with("-M raspi4b -accel tcg,thread=multi -dtb g.dtb -kernel f.img "), "{a}");
        assert!(a.contains(" -initrd g.cpio "), "{a}");
        assert!(!joined(&m.args(Path::new("f.img"), None)).contains("-dtb"));
    }

    #[test]
    fn raspi_command_line() {
        let m = Machine { board: Board::Raspi4b, ..Machine::default() };
        let a = joined(&m.args(Path::new("i.img"), Some(Path::new("pi.dtb"))));
        assert!(a.starts_with("-M raspi4b -accel tcg,thread=multi -dtb pi.dtb -kernel i.img "), "{a}");
        assert!(a.contains("-serial chardev:console -serial chardev:console"), "{a}");
        assert!(!a.contains("-serial stdio"), "{a}");
        assert!(!a.contains("-smp") && !a.contains("-m "), "{a}");
    }

    #[test]
    fn stub_command_line() {
        let m = Machine { smp: 1, ..Machine::default() };
        let a = joined(&stub_boot_args(
            &m,
            Path::new("s.bin"),
            Path::new("i.img"),
            0x4028_0000,
            Path::new("b.dtb"),
            0x4800_0000,
        ));
        assert!(a.contains("-bios s.bin -device loader,file=i.img,addr=0x40280000,force-raw=on"), "{a}");
        assert!(a.contains("-device loader,file=b.dtb,addr=0x48000000,force-raw=on"), "{a}");
        assert!(!a.contains("-kernel"), "{a}");
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(run_status(End::Exited(Some(0)), Some(0), None), (0, None));
        assert_eq!(run_status(End::Exited(Some(3)), Some(3), None), (3, None));
        // PSCI SYSTEM_OFF ends QEMU with 0 whatever the hypervisor's status.
        assert_eq!(run_status(End::Exited(Some(0)), Some(1), None), (1, None));
        assert_eq!(run_status(End::Stopped, Some(5), None), (5, None));
        assert_eq!(run_status(End::Exited(Some(1)), Some(0), None).0, 1);
        let (code, msg) = run_status(End::TimedOut, Some(0), Some(7));
        assert_eq!((code, msg.as_deref()), (124, Some("timeout after 7s")));
        let (code, msg) = run_status(End::Exited(Some(0)), None, None);
        assert_eq!(code, 2);
        assert!(msg.unwrap().starts_with("hypervisor ended without a power-off line"));
    }

    fn sh(script: &str, timeout_ms: u64) -> Outcome {
        let watch = Watch {
            echo: false,
            interactive: false,
            timeout: Some(Duration::from_millis(timeout_ms)),
            stop_on: |l| match l {
                "STOP" => Some(Duration::from_millis(500)),
                "LATER" => Some(Duration::from_millis(2000)),
                "NOW" => Some(Duration::ZERO),
                _ => None,
            },
            progress: None,
        };
        run_program("sh", &["-c".into(), script.into()], &watch).unwrap()
    }

    #[test]
    fn runner_collects_output_and_exit_code() {
        let o = sh("printf 'one\r\ntwo\nthree'; echo oops >&2; exit 3", 5000);
        assert_eq!(o.end, End::Exited(Some(3)));
        assert_eq!(o.output, "one\ntwo\nthree\n");
        assert_eq!(o.stderr, "oops\n");
        assert!(o.tail(2).ends_with("three\n[qemu stderr] oops"), "{}", o.tail(2));
    }

    #[test]
    fn runner_stops_after_a_quiet_grace() {
        // Output after the stop line restarts the grace period.
        let start = Instant::now();
        let o = sh("echo STOP; sleep 0.2; echo more; exec sleep 30", 10_000);
        let took = start.elapsed();
        assert_eq!(o.end, End::Stopped);
        assert_eq!(o.output, "STOP\nmore\n");
        assert!(took >= Duration::from_millis(650) && took < Duration::from_secs(5), "{took:?}");
        // The shortest grace of the lines seen applies.
        let start = Instant::now();
        let o = sh("echo LATER; echo STOP; exec sleep 30", 10_000);
        assert_eq!(o.end, End::Stopped);
        assert!(start.elapsed() < Duration::from_millis(1500), "{:?}", start.elapsed());
        let o = sh("echo NOW; exec sleep 30", 10_000);
        assert_eq!(o.end, End::Stopped);
        // A program that exits within the grace period is not stopped.
        let o = sh("echo LATER; sleep 0.1; exit 0", 10_000);
        assert_eq!(o.end, End::Exited(Some(0)));
    }

    #[test]
    fn progress_watchdog() {
        let watch = |stall_ms| Watch {
            echo: false,
            interactive: false,
            timeout: Some(Duration::from_secs(10)),
            stop_on: |_| None,
            progress: Some(Progress {
                classify: |l| match l {
                    l if l.starts_with("beat") => Beat::Alive,
                    "done" => Beat::Finished,
                    _ => Beat::Other,
                },
                stall: Duration::from_millis(stall_ms),
                print: false,
            }),
        };
        let run = |script: &str, stall_ms| run_program("sh", &["-c".into(), script.into()], &watch(stall_ms)).unwrap();
        // Beats closer than the stall keep it going; other lines do not count.
        let o = run("for i in 1 2 3 4; do echo beat $i; echo noise; sleep 0.2; done; exit 0", 700);
        assert_eq!((o.end, o.stalled), (End::Exited(Some(0)), None));
        let start = Instant::now();
        let o = run("echo beat 1; while true; do echo noise; sleep 0.1; done", 600);
        assert_eq!((o.end, o.stalled.as_deref()), (End::Stopped, Some("beat 1")));
        assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
        // No beat at all: stalled from the start.
        let o = run("exec sleep 30", 300);
        assert_eq!(o.stalled.as_deref(), Some(""));
        // Once the guest has finished, silence is no stall.
        let o = run("echo beat 1; echo done; sleep 1; exit 0", 300);
        assert_eq!((o.end, o.stalled), (End::Exited(Some(0)), None));
    }

    #[test]
    fn runner_times_out() {
        let start = Instant::now();
        let o = sh("echo hello; exec sleep 30", 300);
        assert_eq!(o.end, End::TimedOut);
        assert_eq!(o.output, "hello\n");
        assert!(start.elapsed() < Duration::from_secs(5));
    }
}
