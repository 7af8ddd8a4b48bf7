//! The VM driver: a backend-neutral [`Driver`] trait, its QEMU `-M microvm` backend, the QMP
//! client, process supervision (QEMU never outlives kiln), and the multiplexed channel to the
//! guest agent over virtio-serial.
#![warn(missing_docs)]

pub mod accel;
pub mod cgroup;
pub mod channel;
pub mod confine;
pub mod driver;
pub mod error;
pub mod hostops;
pub mod jail;
pub mod qcow2;
pub mod qemu;
pub mod memo;
pub mod overlay;
pub mod qmp;
pub mod spawn;
pub mod version;

pub use accel::{Accel, AccelChoice};
pub use channel::AgentChannel;
pub use driver::{default_driver, Driver, Vm, VmFuture, VmSpec};
pub use error::VmError;
pub use qemu::{Qemu, QemuVm};
pub use version::QemuVersion;
