//! # A text console on a pixel screen
//!
//! The virtio-gpu driver ([`crate::gpu`]) gives the kernel a framebuffer and
//! a way to tell the host which rectangle of it changed (virtio 1.2 §5.7.6.8
//! TRANSFER_TO_HOST_2D and RESOURCE_FLUSH). This module turns it into a
//! terminal, in two parts that know nothing of virtio and are tested on the
//! host as they are:
//!
//! - [`TextGrid`]: what a terminal shows, as characters: `cols` x `rows`
//!   cells, a cursor, line wrap, scrolling, and the control bytes a shell
//!   sends (CR, LF, backspace, tab, bell; escape sequences are swallowed).
//!   It remembers which cells changed since they were last drawn
//!   ([`TextGrid::take_dirty`]), one span of columns per row, so a key
//!   press redraws one cell and a scroll only the text that moved.
//! - [`render`]: draws a [`DirtySpan`] with the 8x16 font of [`font`] into
//!   anything that takes rows of pixels ([`Canvas`]), and says which pixel
//!   rectangle it touched, the rectangle the GPU is then asked to transfer
//!   and flush.
//!
//! The cursor is its cell drawn in inverse video (a block).
//!
//! Pixels are 32-bit B8G8R8X8 (VIRTIO_GPU_FORMAT_B8G8R8X8_UNORM, §5.7.6.8):
//! bytes blue, green, red, unused, in memory order.

pub mod font;

use alloc::vec;
use alloc::vec::Vec;

use font::{GLYPH_HEIGHT, GLYPH_WIDTH};

/// Text colour: light grey (red, green, blue).
pub const FOREGROUND: [u8; 3] = [0xd0, 0xd0, 0xd0];
/// Background colour: a dark blue (red, green, blue).
pub const BACKGROUND: [u8; 3] = [0x10, 0x18, 0x30];
/// Columns between tab stops.
pub const TAB_WIDTH: usize = 8;

/// A span of changed cells in one row: columns `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirtySpan {
    /// The row.
    pub row: usize,
    /// First changed column.
    pub first: usize,
    /// Last changed column (inclusive).
    pub last: usize,
}

/// A rectangle of pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PixelRect {
    /// Left edge.
    pub x: u32,
    /// Top edge.
    pub y: u32,
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
}

impl PixelRect {
    /// The smallest rectangle holding both (an empty one holds nothing).
    pub fn union(self, other: PixelRect) -> PixelRect {
        if self.width == 0 || self.height == 0 {
            return other;
        }
        if other.width == 0 || other.height == 0 {
            return self;
        }
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        let right = (self.x + self.width).max(other.x + other.width);
        let bottom = (self.y + self.height).max(other.y + other.height);
        PixelRect {
            x,
            y,
            width: right - x,
            height: bottom - y,
        }
    }
}

/// Where an escape sequence is (only to swallow it: the screen has no
/// colours or cursor addressing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After ESC.
    Start,
    /// Inside `ESC [` until a final byte 0x40-0x7e.
    Csi,
}

/// A terminal's text: see the module documentation.
#[derive(Debug, Clone)]
pub struct TextGrid {
    cols: usize,
    rows: usize,
    cells: Vec<u8>,
    cursor_col: usize,
    cursor_row: usize,
    /// Per row, the changed columns not yet drawn.
    dirty: Vec<Option<(usize, usize)>>,
    escape: Escape,
}

impl TextGrid {
    /// An empty grid of `cols` x `rows` cells (at least 1 x 1), all dirty.
    pub fn new(cols: usize, rows: usize) -> Self {
        let (cols, rows) = (cols.max(1), rows.max(1));
        let mut grid = TextGrid {
            cols,
            rows,
            cells: vec![b' '; cols * rows],
            cursor_col: 0,
            cursor_row: 0,
            dirty: vec![None; rows],
            escape: Escape::None,
        };
        grid.mark_all();
        grid
    }

    /// Columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The cell the cursor is drawn on: (column, row). (After the last
    /// column of a row is printed the cursor waits on that column until
    /// the next byte decides between a wrap and a new line.)
    pub fn cursor(&self) -> (usize, usize) {
        (self.cursor_col.min(self.cols - 1), self.cursor_row)
    }

    /// The byte in a cell (space outside the grid).
    pub fn cell(&self, col: usize, row: usize) -> u8 {
        if col < self.cols && row < self.rows {
            self.cells[row * self.cols + col]
        } else {
            b' '
        }
    }

    /// One row's bytes.
    pub fn row_bytes(&self, row: usize) -> &[u8] {
        let row = row.min(self.rows - 1);
        &self.cells[row * self.cols..(row + 1) * self.cols]
    }

    /// A new size (a display change): the bottom rows of the text are kept,
    /// cut to the new width; the cursor stays on the text's last line;
    /// everything is dirty.
    pub fn resize(&mut self, cols: usize, rows: usize) {
        let (cols, rows) = (cols.max(1), rows.max(1));
        let mut cells = vec![b' '; cols * rows];
        // Keep the rows up to the cursor's, the last `rows` of them.
        let keep = (self.cursor_row + 1).min(rows);
        let first_old = self.cursor_row + 1 - keep;
        for i in 0..keep {
            let old = self.row_bytes(first_old + i);
            let n = old.len().min(cols);
            cells[i * cols..i * cols + n].copy_from_slice(&old[..n]);
        }
        self.cols = cols;
        self.rows = rows;
        self.cells = cells;
        self.cursor_row = keep - 1;
        self.cursor_col = self.cursor_col.min(cols);
        self.dirty = vec![None; rows];
        self.mark_all();
    }

    /// Writes terminal output: see the module documentation for the bytes
    /// understood. The old and new cursor cells become dirty.
    pub fn write(&mut self, bytes: &[u8]) {
        let before = self.cursor();
        for &byte in bytes {
            self.put(byte);
        }
        let after = self.cursor();
        if after != before {
            self.mark(before.1, before.0, before.0);
            self.mark(after.1, after.0, after.0);
        }
    }

    fn put(&mut self, byte: u8) {
        match self.escape {
            Escape::Start => {
                self.escape = if byte == b'[' {
                    Escape::Csi
                } else {
                    Escape::None
                };
                return;
            }
            Escape::Csi => {
                if (0x40..=0x7e).contains(&byte) {
                    self.escape = Escape::None;
                }
                return;
            }
            Escape::None => {}
        }
        match byte {
            0x1b => self.escape = Escape::Start,
            b'\r' => self.cursor_col = 0,
            b'\n' => {
                self.cursor_col = 0;
                self.line_feed();
            }
            // From the waiting position past the edge, back onto the last
            // column (so BS SP BS erases the last character of a full row).
            0x08 if self.cursor_col >= self.cols => self.cursor_col = self.cols - 1,
            0x08 => self.cursor_col = self.cursor_col.saturating_sub(1),
            b'\t' => {
                let next = (self.cursor_col / TAB_WIDTH + 1) * TAB_WIDTH;
                while self.cursor_col < next.min(self.cols) {
                    self.print(b' ');
                }
            }
            // Bell, DEL, other controls: nothing to show.
            0x00..=0x1f | 0x7f => {}
            _ => self.print(byte),
        }
    }

    /// Puts a visible byte at the cursor and advances, wrapping at the edge.
    fn print(&mut self, byte: u8) {
        if self.cursor_col >= self.cols {
            self.cursor_col = 0;
            self.line_feed();
        }
        let (col, row) = (self.cursor_col, self.cursor_row);
        let cell = &mut self.cells[row * self.cols + col];
        if *cell != byte {
            *cell = byte;
            self.mark(row, col, col);
        }
        // At the right edge the cursor waits past the last column: the
        // wrap happens only if another byte is printed (so a full line
        // followed by CR LF does not leave an empty line).
        self.cursor_col += 1;
    }

    /// Down one row, scrolling the text up at the bottom.
    fn line_feed(&mut self) {
        if self.cursor_row + 1 < self.rows {
            self.cursor_row += 1;
            return;
        }
        // Only the columns that hold text before or after the move change.
        let old_lengths: Vec<usize> = (0..self.rows).map(|r| self.text_length(r)).collect();
        self.cells.copy_within(self.cols.., 0);
        let last = (self.rows - 1) * self.cols;
        self.cells[last..].fill(b' ');
        for (row, old) in old_lengths.into_iter().enumerate() {
            let new = self.text_length(row);
            let width = old.max(new);
            if width > 0 {
                self.mark(row, 0, width - 1);
            }
        }
    }

    /// Columns up to the last non-blank one.
    fn text_length(&self, row: usize) -> usize {
        self.row_bytes(row)
            .iter()
            .rposition(|&b| b != b' ')
            .map_or(0, |i| i + 1)
    }

    fn mark(&mut self, row: usize, first: usize, last: usize) {
        if row >= self.rows || first >= self.cols {
            return;
        }
        let last = last.min(self.cols - 1);
        let span = &mut self.dirty[row];
        *span = Some(match *span {
            Some((a, b)) => (a.min(first), b.max(last)),
            None => (first, last),
        });
    }

    /// Marks every cell dirty (a new framebuffer must be drawn whole).
    pub fn mark_all(&mut self) {
        for row in 0..self.rows {
            self.mark(row, 0, self.cols - 1);
        }
    }

    /// The changed spans since the last call, top to bottom; afterwards
    /// nothing is dirty.
    pub fn take_dirty(&mut self) -> Vec<DirtySpan> {
        self.dirty
            .iter_mut()
            .enumerate()
            .filter_map(|(row, span)| {
                span.take()
                    .map(|(first, last)| DirtySpan { row, first, last })
            })
            .collect()
    }
}

/// Something that takes rows of B8G8R8X8 pixels: a framebuffer.
pub trait Canvas {
    /// Width in pixels.
    fn width(&self) -> u32;
    /// Height in pixels.
    fn height(&self) -> u32;
    /// Writes `pixels` (4 bytes each) at `(x, y)` going right; pixels past
    /// the right edge are not written.
    fn write_row(&mut self, x: u32, y: u32, pixels: &[u8]);
}

/// A colour as a B8G8R8X8 pixel.
pub const fn pixel(rgb: [u8; 3]) -> [u8; 4] {
    [rgb[2], rgb[1], rgb[0], 0]
}

/// The grid that fits `width` x `height` pixels: (columns, rows).
pub fn grid_size(width: u32, height: u32) -> (usize, usize) {
    (width as usize / GLYPH_WIDTH, height as usize / GLYPH_HEIGHT)
}

/// Draws one dirty span of `grid` into `canvas` (the cursor too, if it is
/// in the span) and returns the pixel rectangle it drew (empty if the span
/// lies outside the canvas).
pub fn render(grid: &TextGrid, span: DirtySpan, canvas: &mut impl Canvas) -> PixelRect {
    let (cursor_col, cursor_row) = grid.cursor();
    let cells = span.last + 1 - span.first;
    let x = (span.first * GLYPH_WIDTH) as u32;
    let y = (span.row * GLYPH_HEIGHT) as u32;
    if x >= canvas.width() || y + GLYPH_HEIGHT as u32 > canvas.height() {
        return PixelRect::default();
    }
    let width = ((cells * GLYPH_WIDTH) as u32).min(canvas.width() - x);
    let (fg, bg) = (pixel(FOREGROUND), pixel(BACKGROUND));
    let mut row_pixels = vec![0u8; cells * GLYPH_WIDTH * 4];
    for line in 0..GLYPH_HEIGHT {
        for (i, col) in (span.first..=span.last).enumerate() {
            let mut bits = font::glyph(grid.cell(col, span.row))[line];
            if span.row == cursor_row && col == cursor_col {
                bits = !bits;
            }
            for bit in 0..GLYPH_WIDTH {
                let on = bits & (0x80 >> bit) != 0;
                let at = (i * GLYPH_WIDTH + bit) * 4;
                row_pixels[at..at + 4].copy_from_slice(if on { &fg } else { &bg });
            }
        }
        canvas.write_row(x, y + line as u32, &row_pixels);
    }
    PixelRect {
        x,
        y,
        width,
        height: GLYPH_HEIGHT as u32,
    }
}

/// Fills the whole canvas with the background colour (the margins right
/// and below the grid stay that way).
pub fn clear(canvas: &mut impl Canvas) {
    let bg = pixel(BACKGROUND);
    let row: Vec<u8> = (0..canvas.width()).flat_map(|_| bg).collect();
    for y in 0..canvas.height() {
        canvas.write_row(0, y, &row);
    }
}
