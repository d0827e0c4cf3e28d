//! Running code that may panic on damaged files, so that the panic becomes
//! an error and not a crash with a backtrace.
//!
//! The database is opened by redb, which verifies page checksums at open
//! (see `roster_store::Store::open`) but whose own decoding of a file
//! altered behind its back is not promised never to panic. A node that
//! finds its data damaged must say so and refuse to start (`roster:
//! error: ...`, exit 1); a panic there is the same refusal told badly.
//!
//! [`quietly`] runs a closure under `catch_unwind` and keeps the panic hook
//! from printing for panics on *this* thread while it runs (other threads
//! still report theirs as usual): the panic's message and place come back
//! in the error instead.

use std::any::Any;
use std::cell::RefCell;
use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

thread_local! {
    /// Set while [`quietly`] runs on this thread: the hook records the
    /// panic's place here rather than printing it.
    static CAUGHT: RefCell<Option<Option<String>>> = const { RefCell::new(None) };
}

static HOOK: Once = Once::new();

/// Installs, once, a panic hook that defers to the previous one except on
/// a thread inside [`quietly`].
fn install_hook() {
    HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            let quiet = CAUGHT
                .try_with(|c| {
                    let mut c = c.borrow_mut();
                    match c.as_mut() {
                        Some(place) => {
                            *place = info.location().map(|l| l.to_string());
                            true
                        }
                        None => false,
                    }
                })
                .unwrap_or(false);
            if !quiet {
                previous(info);
            }
        }));
    });
}

/// Runs `f`; a panic inside it is returned as `Err` with its message and
/// place, and is not printed.
pub fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    install_hook();
    let outer = CAUGHT.with(|c| c.borrow_mut().replace(None));
    let result = panic::catch_unwind(AssertUnwindSafe(f));
    let place = CAUGHT.with(|c| std::mem::replace(&mut *c.borrow_mut(), outer));
    result.map_err(|payload| {
        let msg = message(&*payload);
        match place.flatten() {
            Some(place) => format!("{msg} (at {place})"),
            None => msg,
        }
    })
}

fn message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "a panic with no message".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::quietly;

    #[test]
    fn a_panic_becomes_an_error_with_its_message_and_place() {
        let err = quietly(|| -> u8 {
            let v: Vec<u8> = Vec::new();
            let i = v.len() + 3;
            v[i]
        })
        .unwrap_err();
        assert!(err.contains("index out of bounds"), "{err}");
        assert!(err.contains("contain.rs"), "{err}");
        assert_eq!(quietly(|| 5), Ok(5));
    }

    #[test]
    fn nested_calls_keep_the_outer_one_quiet() {
        let outer = quietly(|| {
            let inner = quietly(|| panic!("inner"));
            assert_eq!(inner.unwrap_err().split(" (at").next(), Some("inner"));
            panic!("outer")
        });
        assert!(outer.unwrap_err().starts_with("outer"));
    }
}
