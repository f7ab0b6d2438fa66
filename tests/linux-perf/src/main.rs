//! `perfcheck`: run by the Linux guest tests' `/init` (xtask/src/linux.rs)
//! as `/bin/perfcheck EVENT...`, with EVENT `cycles` or `instructions`
//! (`PERF_COUNT_HW_CPU_CYCLES`, `PERF_COUNT_HW_INSTRUCTIONS`). For each it
//! opens a perf_event counter on itself (`perf_event_open(2)`, pid 0,
//! cpu -1, user and kernel counted), enables it, works, reads it, works
//! more, reads it again, disables it and checks it then stands still. It
//! prints `LINUX: perf EVENT counting` when the count is non-zero, grew
//! across the work and stood still while disabled, else
//! `LINUX: perf FAILED: EVENT: why` (the errno by name); the exit status
//! is 0 only when every event counted. A line `perfcheck: EVENT: A B C`
//! gives the three counts, which differ between runs and are not compared.
//!
//! A static, non-PIE arm64 Linux executable without libc: raw system calls
//! through `svc #0` (arm64's numbers, include/uapi/asm-generic/unistd.h),
//! linked at 0x400000 by linker/linux-perf.ld. Built by xtask for
//! `aarch64-unknown-none` with `-C relocation-model=static`; on the host it
//! is an empty program, so `cargo test --workspace` builds.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(not(target_os = "none"))]
fn main() {}

#[cfg(target_os = "none")]
mod linux {
    use core::arch::{asm, global_asm};

    const SYS_IOCTL: u64 = 29;
    const SYS_READ: u64 = 63;
    const SYS_WRITE: u64 = 64;
    const SYS_EXIT: u64 = 93;
    const SYS_PERF_EVENT_OPEN: u64 = 241;

    const STDOUT: u64 = 1;

    /// `PERF_TYPE_HARDWARE` and its generic events (include/uapi/linux/perf_event.h).
    const PERF_TYPE_HARDWARE: u32 = 0;
    const PERF_COUNT_HW_CPU_CYCLES: u64 = 0;
    const PERF_COUNT_HW_INSTRUCTIONS: u64 = 1;
    /// `_IO('$', 0)`, `_IO('$', 1)`, `_IO('$', 3)`.
    const PERF_EVENT_IOC_ENABLE: u64 = 0x2400;
    const PERF_EVENT_IOC_DISABLE: u64 = 0x2401;
    const PERF_EVENT_IOC_RESET: u64 = 0x2403;
    /// `perf_event_attr.disabled`: the first bit of its flags word.
    const ATTR_DISABLED: u64 = 1 << 0;

    /// `struct perf_event_attr` up to `config1`: `PERF_ATTR_SIZE_VER0`,
    /// which every kernel with perf_event accepts.
    #[repr(C)]
    struct PerfEventAttr {
        type_: u32,
        size: u32,
        config: u64,
        sample_period: u64,
        sample_type: u64,
        read_format: u64,
        flags: u64,
        wakeup_events: u32,
        bp_type: u32,
        config1: u64,
    }
    const _: () = assert!(core::mem::size_of::<PerfEventAttr>() == 64);

    /// Iterations of the work loop between two reads.
    const WORK: u64 = 200_000;

    // The kernel enters with sp at argc, then argv[], NULL, envp[], NULL, auxv.
    global_asm!(
        ".section .text._start, \"ax\"",
        ".global _start",
        "_start:",
        "    mov x0, sp",
        "    bl {main}",
        "    b .",
        main = sym start,
    );

    /// A system call with up to five arguments; the kernel returns a
    /// negative errno on failure.
    ///
    /// # Safety
    /// The arguments must be what system call `nr` expects (pointers to
    /// memory of the size it reads or writes).
    unsafe fn syscall(nr: u64, a: [u64; 5]) -> i64 {
        let ret: i64;
        // SAFETY: `svc #0` is Linux's system call; the caller vouches for
        // the arguments. The kernel preserves every register but x0.
        unsafe {
            asm!("svc #0", in("x8") nr, inlateout("x0") a[0] => ret, in("x1") a[1], in("x2") a[2],
                 in("x3") a[3], in("x4") a[4], options(nostack));
        }
        ret
    }

    fn write(bytes: &[u8]) {
        let mut rest = bytes;
        while !rest.is_empty() {
            // SAFETY: write(2) reads `rest.len()` bytes of `rest`.
            let n = unsafe { syscall(SYS_WRITE, [STDOUT, rest.as_ptr() as u64, rest.len() as u64, 0, 0]) };
            if n <= 0 {
                return;
            }
            rest = &rest[(n as usize).min(rest.len())..];
        }
    }

    fn exit(status: u64) -> ! {
        // SAFETY: exit(2) takes a status and does not return.
        unsafe { syscall(SYS_EXIT, [status, 0, 0, 0, 0]) };
        loop {
            core::hint::spin_loop();
        }
    }

    /// A line of text built without an allocator.
    struct Line {
        buf: [u8; 160],
        len: usize,
    }

    impl Line {
        fn new() -> Self {
            Line { buf: [0; 160], len: 0 }
        }
        fn str(&mut self, s: &str) -> &mut Self {
            self.bytes(s.as_bytes())
        }
        fn bytes(&mut self, s: &[u8]) -> &mut Self {
            for &b in s {
                if self.len < self.buf.len() - 1 {
                    self.buf[self.len] = b;
                    self.len += 1;
                }
            }
            self
        }
        fn num(&mut self, mut n: u64) -> &mut Self {
            let mut digits = [0u8; 20];
            let mut i = digits.len();
            loop {
                i -= 1;
                digits[i] = b'0' + (n % 10) as u8;
                n /= 10;
                if n == 0 {
                    break;
                }
            }
            self.bytes(&digits[i..])
        }
        fn print(&mut self) {
            self.buf[self.len] = b'\n';
            write(&self.buf[..=self.len]);
        }
    }

    /// The name of an errno perf_event_open(2), ioctl(2) or read(2) may
    /// give (include/uapi/asm-generic/errno-base.h, errno.h).
    fn errno_name(e: i64) -> &'static str {
        match e {
            1 => "EPERM",
            2 => "ENOENT",
            4 => "EINTR",
            5 => "EIO",
            9 => "EBADF",
            12 => "ENOMEM",
            13 => "EACCES",
            14 => "EFAULT",
            16 => "EBUSY",
            19 => "ENODEV",
            22 => "EINVAL",
            24 => "EMFILE",
            38 => "ENOSYS",
            75 => "EOVERFLOW",
            95 => "EOPNOTSUPP",
            _ => "errno",
        }
    }

    fn failed(event: &str, what: &str, ret: i64) -> Result<(), ()> {
        let mut l = Line::new();
        l.str("LINUX: perf FAILED: ").str(event).str(": ").str(what);
        if ret < 0 {
            l.str(": ").str(errno_name(-ret)).str(" (errno ").num(ret.unsigned_abs()).str(")");
        }
        l.print();
        Err(())
    }

    /// Work the counters see: a loop the compiler cannot remove.
    fn work(iterations: u64) {
        // SAFETY: a register-only countdown loop.
        unsafe {
            asm!("1: subs {n}, {n}, #1", "b.ne 1b", n = inout(reg) iterations.max(1) => _,
                 options(nomem, nostack));
        }
    }

    fn read_count(fd: u64) -> Result<u64, i64> {
        let mut count = 0u64;
        // SAFETY: with read_format 0, read(2) writes the count, one u64.
        let n = unsafe { syscall(SYS_READ, [fd, &mut count as *mut u64 as u64, 8, 0, 0]) };
        match n {
            8 => Ok(count),
            n if n < 0 => Err(n),
            _ => Err(0),
        }
    }

    fn ioctl(fd: u64, request: u64) -> i64 {
        // SAFETY: the perf_event ioctls used here take no pointer.
        unsafe { syscall(SYS_IOCTL, [fd, request, 0, 0, 0]) }
    }

    fn check(event: &str, config: u64) -> Result<(), ()> {
        let attr = PerfEventAttr {
            type_: PERF_TYPE_HARDWARE,
            size: core::mem::size_of::<PerfEventAttr>() as u32,
            config,
            sample_period: 0,
            sample_type: 0,
            read_format: 0,
            flags: ATTR_DISABLED,
            wakeup_events: 0,
            bp_type: 0,
            config1: 0,
        };
        // SAFETY: perf_event_open(attr, pid 0 = this task, cpu -1 = any,
        // group_fd -1, flags 0) reads `attr.size` bytes of `attr`.
        let fd = unsafe { syscall(SYS_PERF_EVENT_OPEN, [&attr as *const _ as u64, 0, u64::MAX, u64::MAX, 0]) };
        if fd < 0 {
            return failed(event, "perf_event_open", fd);
        }
        let fd = fd as u64;
        for (request, what) in [(PERF_EVENT_IOC_RESET, "ioctl RESET"), (PERF_EVENT_IOC_ENABLE, "ioctl ENABLE")] {
            let r = ioctl(fd, request);
            if r < 0 {
                return failed(event, what, r);
            }
        }
        work(WORK);
        let first = read_count(fd);
        work(WORK);
        let second = read_count(fd);
        let r = ioctl(fd, PERF_EVENT_IOC_DISABLE);
        if r < 0 {
            return failed(event, "ioctl DISABLE", r);
        }
        let stopped = read_count(fd);
        work(WORK);
        let still = read_count(fd);
        let (a, b, c, d) = match (first, second, stopped, still) {
            (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return failed(event, "read", e),
        };
        Line::new().str("perfcheck: ").str(event).str(": ").num(a).str(" ").num(b).str(" ").num(d).print();
        if a == 0 {
            return failed(event, "the count is 0 after the first work", 0);
        }
        if b <= a {
            return failed(event, "the count did not grow across the second work", 0);
        }
        if d != c {
            return failed(event, "the count changed while the event was disabled", 0);
        }
        Line::new().str("LINUX: perf ").str(event).str(" counting").print();
        Ok(())
    }

    /// argv[1..] as C strings, from the stack the kernel set up.
    ///
    /// # Safety
    /// `sp` must be the initial stack pointer of the process.
    unsafe fn arg(sp: *const u64, i: u64) -> &'static [u8] {
        // SAFETY: the kernel's initial stack holds argc, then argc pointers
        // to NUL-terminated strings; the caller keeps i < argc.
        unsafe {
            let p = *sp.add(1 + i as usize) as *const u8;
            let mut n = 0;
            while *p.add(n) != 0 {
                n += 1;
            }
            core::slice::from_raw_parts(p, n)
        }
    }

    extern "C" fn start(sp: *const u64) -> ! {
        // SAFETY: `_start` passes the initial stack pointer.
        let argc = unsafe { *sp };
        if argc < 2 {
            Line::new().str("LINUX: perf FAILED: usage: perfcheck cycles|instructions...").print();
            exit(2);
        }
        let mut ok = true;
        for i in 1..argc {
            // SAFETY: i < argc.
            let result = match unsafe { arg(sp, i) } {
                b"cycles" => check("cycles", PERF_COUNT_HW_CPU_CYCLES),
                b"instructions" => check("instructions", PERF_COUNT_HW_INSTRUCTIONS),
                _ => failed("?", "unknown event (cycles or instructions)", 0),
            };
            ok &= result.is_ok();
        }
        exit(if ok { 0 } else { 1 });
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        write(b"LINUX: perf FAILED: perfcheck panicked\n");
        exit(3);
    }
}
