//! Free RAM: memory minus reserved ranges, in whole frames.

use super::FRAME_SIZE;
use ferrovisor_shared::dt::MemRegion;

const PAGE: u64 = FRAME_SIZE as u64;

fn align_down(x: u64) -> u64 {
    x & !(PAGE - 1)
}

/// `x` rounded up to a frame boundary; `None` past the top of the address space.
fn align_up(x: u64) -> Option<u64> {
    Some(x.checked_add(PAGE - 1)? & !(PAGE - 1))
}

/// Writes to `out` the parts of `memory` that no range in `reserved` touches,
/// shrunk inward to whole frames, sorted by address and merged where they
/// meet; pieces smaller than a frame are dropped. A reserved range takes
/// every frame it touches. Pass the device tree's reservations together with
/// the image, the device tree blob and the initrd. Neither input needs to be
/// sorted, and ranges may overlap.
///
/// Returns how many entries of `out` were written; when `out` is too small
/// the pieces that do not fit are left out (so that memory goes unused).
pub fn usable_regions(memory: &[MemRegion], reserved: &[MemRegion], out: &mut [MemRegion]) -> usize {
    let mut n = 0;
    'memory: for m in memory {
        let Some(mut cur) = align_up(m.base) else {
            continue;
        };
        let end = align_down(m.end());
        while cur < end {
            // A reservation covering `cur` (in whole frames): skip past it.
            if let Some(r) = reserved
                .iter()
                .filter(|r| !r.is_empty() && align_down(r.base) <= cur && cur < r.end())
                .max_by_key(|r| r.end())
            {
                match align_up(r.end()) {
                    Some(next) => cur = next,
                    None => break,
                }
                continue;
            }
            // Free up to the next reservation that starts before `end`.
            let stop = reserved
                .iter()
                .filter(|r| !r.is_empty() && r.base > cur)
                .map(|r| align_down(r.base))
                .fold(end, u64::min);
            if stop > cur {
                let Some(slot) = out.get_mut(n) else {
                    break 'memory;
                };
                *slot = MemRegion::from_bounds(cur, stop);
                n += 1;
            }
            cur = stop.max(cur + PAGE);
        }
    }
    merge_sorted(&mut out[..n])
}

/// Sorts `regions` and merges overlapping or touching ones in place; returns
/// the new count.
fn merge_sorted(regions: &mut [MemRegion]) -> usize {
    regions.sort_unstable();
    let mut n = 0usize;
    for i in 0..regions.len() {
        let r = regions[i];
        if let Some(last) = n.checked_sub(1).and_then(|last| regions.get_mut(last)) {
            if r.base <= last.end() {
                *last = MemRegion::from_bounds(last.base, last.end().max(r.end()));
                continue;
            }
        }
        regions[n] = r;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(base: u64, size: u64) -> MemRegion {
        MemRegion::new(base, size)
    }

    fn usable(memory: &[MemRegion], reserved: &[MemRegion]) -> Vec<MemRegion> {
        let mut out = [MemRegion::EMPTY; 16];
        let n = usable_regions(memory, reserved, &mut out);
        out[..n].to_vec()
    }

    #[test]
    fn nothing_reserved_is_memory_trimmed_to_frames() {
        assert_eq!(usable(&[r(0x4000_0000, 0x4000_0000)], &[]), [r(0x4000_0000, 0x4000_0000)]);
        assert_eq!(usable(&[r(0x1001, 0x3000)], &[]), [r(0x2000, 0x2000)]);
        assert_eq!(usable(&[r(0x1001, 0x1000)], &[]), []);
    }

    #[test]
    fn qemu_virt_layout() {
        let ram = r(0x4000_0000, 0x4000_0000);
        let image = MemRegion::from_bounds(0x4008_0000, 0x4023_4567);
        let dtb = r(0x4800_0000, 0x1fa8);
        let initrd = r(0x4820_0000, 0x10_0001);
        assert_eq!(
            usable(&[ram], &[dtb, image, initrd]),
            [
                MemRegion::from_bounds(0x4000_0000, 0x4008_0000),
                MemRegion::from_bounds(0x4023_5000, 0x4800_0000),
                MemRegion::from_bounds(0x4800_2000, 0x4820_0000),
                MemRegion::from_bounds(0x4830_1000, 0x8000_0000),
            ]
        );
    }

    #[test]
    fn pi4_layout_with_overlapping_and_unaligned_reservations() {
        let memory = [r(0x4000_0000, 0xbc00_0000), r(0, 0x3b40_0000)];
        let reserved = [
            r(0, 0x1000),                                 // spin table
            MemRegion::from_bounds(0x8_0000, 0x20_0000),  // image
            MemRegion::from_bounds(0x1f_f000, 0x20_0800), // overlaps the image's end
            r(0x3b3f_ff00, 0x10_0000),                    // runs past the end of RAM
            r(0x5000, 0),                                 // empty: ignored
        ];
        assert_eq!(
            usable(&memory, &reserved),
            [
                MemRegion::from_bounds(0x1000, 0x8_0000),
                MemRegion::from_bounds(0x20_1000, 0x3b3f_f000),
                r(0x4000_0000, 0xbc00_0000),
            ]
        );
    }

    #[test]
    fn reservations_outside_memory_and_covering_everything() {
        let ram = r(0x10_0000, 0x10_0000);
        assert_eq!(usable(&[ram], &[r(0, 0x1000), r(0x100_0000, 0x1000)]), [ram]);
        assert_eq!(usable(&[ram], &[r(0, 0x100_0000)]), []);
        assert_eq!(usable(&[ram], &[r(0x10_0000, 0x1)]), [r(0x10_1000, 0xf_f000)]);
    }

    #[test]
    fn a_full_output_keeps_what_fits() {
        let ram = r(0, 0x10_0000);
        let holes: Vec<_> = (1..10).map(|i| r(i * 0x1_0000, 0x1000)).collect();
        let mut out = [MemRegion::EMPTY; 3];
        assert_eq!(usable_regions(&[ram], &holes, &mut out), 3);
        assert_eq!(out, [r(0, 0x1_0000), r(0x1_1000, 0xf000), r(0x2_1000, 0xf000)]);
    }

    #[test]
    fn top_of_the_address_space_does_not_overflow() {
        let top = MemRegion::from_bounds(u64::MAX - 0x5000, u64::MAX);
        assert_eq!(usable(&[top], &[]), [MemRegion::from_bounds(u64::MAX - 0x4fff, u64::MAX - 0xfff)]);
        assert_eq!(usable(&[top], &[r(u64::MAX - 0x2000, 0x2000)]), [r(u64::MAX - 0x4fff, 0x2000)]);
        assert_eq!(usable(&[r(u64::MAX, 0)], &[]), []);
    }

    #[test]
    fn overlapping_memory_is_merged_not_doubled() {
        assert_eq!(usable(&[r(0x1000, 0x4000), r(0x3000, 0x4000)], &[]), [r(0x1000, 0x6000)]);
    }
}
