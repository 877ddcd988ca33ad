//! Key events to terminal bytes: a US keyboard layout.
//!
//! A virtio keyboard reports keys, not characters: EV_KEY events with a
//! Linux key code (`input-event-codes.h`) and a value, 1 for a press, 2 for
//! an autorepeat, 0 for a release. [`Keyboard`] keeps the state of the
//! modifiers and turns each press or repeat into what a terminal in raw
//! mode would send, so the shell's line editor (kernel `shell/line.rs`)
//! reads a keyboard exactly as it reads the virtio console:
//!
//! | key                          | bytes                               |
//! |------------------------------|-------------------------------------|
//! | letters, digits, punctuation | ASCII, US layout; Shift; Caps Lock (letters only) |
//! | Ctrl + letter                | 0x01 - 0x1a (Ctrl-C is 0x03)        |
//! | Enter, keypad Enter          | CR                                  |
//! | Backspace                    | DEL (0x7f)                          |
//! | Tab, Esc                     | 0x09, 0x1b                          |
//! | arrows                       | `ESC [ A` up, `B` down, `C` right, `D` left |
//! | Home, End, Delete            | `ESC [ H`, `ESC [ F`, `ESC [ 3 ~`   |
//!
//! Events of other types, releases of ordinary keys, and codes it does not
//! know produce nothing.

use alloc::vec::Vec;

use super::{event_type, InputEvent};

/// Linux key codes used here (`include/uapi/linux/input-event-codes.h`).
pub mod code {
    /// KEY_ESC.
    pub const KEY_ESC: u16 = 1;
    /// KEY_BACKSPACE.
    pub const KEY_BACKSPACE: u16 = 14;
    /// KEY_TAB.
    pub const KEY_TAB: u16 = 15;
    /// KEY_ENTER.
    pub const KEY_ENTER: u16 = 28;
    /// KEY_LEFTCTRL.
    pub const KEY_LEFTCTRL: u16 = 29;
    /// KEY_A.
    pub const KEY_A: u16 = 30;
    /// KEY_LEFTSHIFT.
    pub const KEY_LEFTSHIFT: u16 = 42;
    /// KEY_Z.
    pub const KEY_Z: u16 = 44;
    /// KEY_RIGHTSHIFT.
    pub const KEY_RIGHTSHIFT: u16 = 54;
    /// KEY_SPACE.
    pub const KEY_SPACE: u16 = 57;
    /// KEY_CAPSLOCK.
    pub const KEY_CAPSLOCK: u16 = 58;
    /// KEY_KPENTER.
    pub const KEY_KPENTER: u16 = 96;
    /// KEY_RIGHTCTRL.
    pub const KEY_RIGHTCTRL: u16 = 97;
    /// KEY_HOME.
    pub const KEY_HOME: u16 = 102;
    /// KEY_UP.
    pub const KEY_UP: u16 = 103;
    /// KEY_LEFT.
    pub const KEY_LEFT: u16 = 105;
    /// KEY_RIGHT.
    pub const KEY_RIGHT: u16 = 106;
    /// KEY_END.
    pub const KEY_END: u16 = 107;
    /// KEY_DOWN.
    pub const KEY_DOWN: u16 = 108;
    /// KEY_DELETE.
    pub const KEY_DELETE: u16 = 111;
}

/// Codes 0..=57 of the main block: (unshifted, shifted) ASCII, 0 for none.
/// Index = key code (KEY_1 = 2 ... KEY_SPACE = 57).
const MAIN_BLOCK: [(u8, u8); 58] = [
    (0, 0),        // 0 reserved
    (0, 0),        // 1 Esc (handled apart)
    (b'1', b'!'),  // 2
    (b'2', b'@'),  // 3
    (b'3', b'#'),  // 4
    (b'4', b'$'),  // 5
    (b'5', b'%'),  // 6
    (b'6', b'^'),  // 7
    (b'7', b'&'),  // 8
    (b'8', b'*'),  // 9
    (b'9', b'('),  // 10
    (b'0', b')'),  // 11
    (b'-', b'_'),  // 12 KEY_MINUS
    (b'=', b'+'),  // 13 KEY_EQUAL
    (0, 0),        // 14 Backspace (apart)
    (0, 0),        // 15 Tab (apart)
    (b'q', b'Q'),  // 16
    (b'w', b'W'),  // 17
    (b'e', b'E'),  // 18
    (b'r', b'R'),  // 19
    (b't', b'T'),  // 20
    (b'y', b'Y'),  // 21
    (b'u', b'U'),  // 22
    (b'i', b'I'),  // 23
    (b'o', b'O'),  // 24
    (b'p', b'P'),  // 25
    (b'[', b'{'),  // 26
    (b']', b'}'),  // 27
    (0, 0),        // 28 Enter (apart)
    (0, 0),        // 29 Left Ctrl
    (b'a', b'A'),  // 30
    (b's', b'S'),  // 31
    (b'd', b'D'),  // 32
    (b'f', b'F'),  // 33
    (b'g', b'G'),  // 34
    (b'h', b'H'),  // 35
    (b'j', b'J'),  // 36
    (b'k', b'K'),  // 37
    (b'l', b'L'),  // 38
    (b';', b':'),  // 39
    (b'\'', b'"'), // 40
    (b'`', b'~'),  // 41
    (0, 0),        // 42 Left Shift
    (b'\\', b'|'), // 43
    (b'z', b'Z'),  // 44
    (b'x', b'X'),  // 45
    (b'c', b'C'),  // 46
    (b'v', b'V'),  // 47
    (b'b', b'B'),  // 48
    (b'n', b'N'),  // 49
    (b'm', b'M'),  // 50
    (b',', b'<'),  // 51
    (b'.', b'>'),  // 52
    (b'/', b'?'),  // 53
    (0, 0),        // 54 Right Shift
    (b'*', b'*'),  // 55 keypad *
    (0, 0),        // 56 Left Alt
    (b' ', b' '),  // 57 Space
];

/// The modifier state of one keyboard. See the module documentation.
#[derive(Debug, Clone, Default)]
pub struct Keyboard {
    left_shift: bool,
    right_shift: bool,
    left_ctrl: bool,
    right_ctrl: bool,
    caps_lock: bool,
}

impl Keyboard {
    /// No modifier held, Caps Lock off.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether Caps Lock is on.
    pub fn caps_lock(&self) -> bool {
        self.caps_lock
    }

    /// Feeds one event; appends the bytes it types (if any) to `out`.
    pub fn feed(&mut self, event: InputEvent, out: &mut Vec<u8>) {
        if event.kind != event_type::KEY {
            return;
        }
        let pressed = event.value != 0;
        match event.code {
            code::KEY_LEFTSHIFT => self.left_shift = pressed,
            code::KEY_RIGHTSHIFT => self.right_shift = pressed,
            code::KEY_LEFTCTRL => self.left_ctrl = pressed,
            code::KEY_RIGHTCTRL => self.right_ctrl = pressed,
            // Toggles on the press, not on repeats.
            code::KEY_CAPSLOCK if event.value == 1 => self.caps_lock = !self.caps_lock,
            _ if pressed => self.type_key(event.code, out),
            _ => {}
        }
    }

    fn type_key(&self, key: u16, out: &mut Vec<u8>) {
        let sequence: &[u8] = match key {
            code::KEY_ESC => b"\x1b",
            code::KEY_BACKSPACE => b"\x7f",
            code::KEY_TAB => b"\t",
            code::KEY_ENTER | code::KEY_KPENTER => b"\r",
            code::KEY_UP => b"\x1b[A",
            code::KEY_DOWN => b"\x1b[B",
            code::KEY_RIGHT => b"\x1b[C",
            code::KEY_LEFT => b"\x1b[D",
            code::KEY_HOME => b"\x1b[H",
            code::KEY_END => b"\x1b[F",
            code::KEY_DELETE => b"\x1b[3~",
            _ => &[],
        };
        if !sequence.is_empty() {
            out.extend_from_slice(sequence);
            return;
        }
        let Some(&(plain, shifted)) = MAIN_BLOCK.get(usize::from(key)) else {
            return;
        };
        if plain == 0 {
            return;
        }
        let shift = self.left_shift || self.right_shift;
        let mut byte = if shift { shifted } else { plain };
        if self.caps_lock && plain.is_ascii_lowercase() {
            // Caps Lock inverts Shift, for letters only.
            byte = if shift { plain } else { shifted };
        }
        if (self.left_ctrl || self.right_ctrl) && byte.is_ascii_alphabetic() {
            byte = byte.to_ascii_uppercase() & 0x1f;
        }
        out.push(byte);
    }
}
