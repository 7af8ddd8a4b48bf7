//! Guest artifacts: the kernel from Debian's cloud kernel package, the initramfs that carries
//! the agent and the virtio modules, and the root filesystem images of templates, all kept in a
//! content-addressed store under kiln's home folder.
#![warn(missing_docs)]

pub mod atomic;
pub mod cpio;
pub mod deb;
pub mod error;
pub mod guest_tree;
pub mod home;
pub mod initramfs;
pub mod kernel;
pub mod lock;
pub mod oci;
pub mod registry;
pub mod rootfs;
pub mod store;
pub mod template;

pub use error::ImageError;
pub use home::Home;
pub use kernel::Kernel;
pub use registry::{BuiltTemplate, ImageOrigin};
pub use store::{Digest, Store};
pub use template::TemplateDef;

/// A sink for progress lines of long operations (printed to stderr by the CLI).
pub type Progress<'a> = &'a (dyn Fn(&str) + Send + Sync);

/// Progress that goes nowhere.
pub fn quiet(_: &str) {}
