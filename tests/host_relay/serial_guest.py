"""A guest that writes to its second serial port without an OS: a 68-byte boot sector.

The serial fallback reads the host end (a pty) of the guest's serial port 1.
To prove bytes written by the *guest* reach the relay, something inside the
VM must write to the UART, and no test image with an OS exists yet.  So the
"guest" is a boot sector: SeaBIOS loads it from a raw disk, it reads the
next 64 sectors (INT 13h AH=42h) to 0x8000 and plays back the records found
there, one after another, to COM2 (I/O port 0x2f8, ``<target port='1'/>``)::

    record := len:u16  delay_hi:u16  delay_lo:u16  bytes[len]     (little endian)

After sending a record's bytes it waits ``delay`` microseconds (INT 15h
AH=86h); a record of length 0 ends the play-back and the CPU halts.  QEMU
drops what the guest writes while nobody has the pty open, so a test plays
the same frames repeatedly (hello, then heartbeats, as the agent does).

The machine code below was assembled with GNU as (``as --32``, ``.code16``)
from this source; it is embedded so the tests need no assembler::

    cli; xor ax,ax; mov ds,ax; mov es,ax; mov ss,ax; mov sp,0x7c00; sti
    mov si,DAP; mov ah,0x42; int 0x13; jc halt      ; DL = boot drive (BIOS)
    mov si,0x8000
  record:
    lodsw; test ax,ax; jz halt; mov bx,ax           ; len
    lodsw; mov di,ax; lodsw; push ax; mov cx,bx     ; delay hi, lo
  byte:
    mov dx,0x2fd
  thre: in al,dx; test al,0x20; jz thre            ; LSR: transmitter empty
    mov dx,0x2f8; lodsb; out dx,al; loop byte
    pop dx; mov cx,di; push si; mov ah,0x86; int 0x15; pop si; jmp record
  halt: hlt; jmp halt
  DAP: db 0x10,0; dw 64; dw 0x8000,0; dq 1
"""

from __future__ import annotations

import struct

from iim_protocol.codec import encode
from iim_protocol.messages import Heartbeat, Hello

SECTOR = 512
PAYLOAD_SECTORS = 64  # what the boot sector reads; the stream must fit (32 KiB)
BOOT_CODE = bytes.fromhex(
    "fa31c08ed88ec08ed0bc007cfbbe447c"
    "b442cd13722bbe0080ad85c0742389c3"
    "ad89c7ad5089d9bafd02eca82074fbba"
    "f802aceee2f15a89f956b486cd155eeb"
    "d8f4ebfd100040000080000001000000"
    "00000000"
)
RECORD = struct.Struct("<HHH")
MAX_DELAY_US = 0xFFFFFFFF
# SeaBIOS cannot boot a disk smaller than one cylinder (16 heads x 63 sectors):
# it reads "0 cylinders" and gives up ("could not read the boot disk").
IMAGE_SIZE = 1 << 20


def boot_image(records: list[tuple[bytes, float]]) -> bytes:
    """A raw disk image that plays ``(data, seconds_after)`` records to serial port 1."""
    stream = bytearray()
    for data, delay in records:
        if not 0 < len(data) < 0x10000:
            raise ValueError(f"record of {len(data)} bytes: 1..65535")
        micros = round(delay * 1_000_000)
        if not 0 <= micros <= MAX_DELAY_US:
            raise ValueError(f"delay {delay}s out of range")
        stream += RECORD.pack(len(data), micros >> 16, micros & 0xFFFF) + data
    stream += RECORD.pack(0, 0, 0)
    if len(stream) > PAYLOAD_SECTORS * SECTOR:
        raise ValueError(f"stream of {len(stream)} bytes does not fit in "
                         f"{PAYLOAD_SECTORS} sectors")
    boot = BOOT_CODE.ljust(SECTOR - 2, b"\0") + b"\x55\xaa"
    return (boot + bytes(stream)).ljust(IMAGE_SIZE, b"\0")


def agent_stream(count: int, interval: float, boot_id: str = "serial-guest",
                 tail: tuple = ()) -> list[tuple[bytes, float]]:
    """Records that speak like an agent: hello + heartbeat ``seq`` every ``interval``.

    Each record carries a hello as well, because frames written before the
    host opened the pty are lost; ``tail`` messages (e.g. a Failure) follow
    the last heartbeat, once (the host is listening by then).
    """
    hello = encode(Hello(protocol_version=1, agent_version="boot-sector", boot_id=boot_id,
                         heartbeat_interval=interval))
    records = [(hello + encode(Heartbeat(seq=seq)), interval) for seq in range(1, count + 1)]
    if tail:
        records.append((b"".join(encode(m) for m in tail), interval))
    return records
