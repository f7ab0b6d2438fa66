//! el2's console: the board's UART, write-only, behind a spin lock. el2 only
//! speaks when something is wrong (and for the few lines before the host has
//! a console of its own).

pub use ferrovisor_shared::console::{init, print_forced};
