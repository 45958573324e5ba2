"""A minimal PE32+ image (a stand-in UKI), written independently of cfsboot's parser."""

from __future__ import annotations

import struct


def make_pe(
    sections: list[tuple[bytes, bytes]],
    *,
    pe_offset: int = 0x80,
    opt_magic: int = 0x20B,
    opt_size: int = 240,
    pad_raw: int = 0x200,
) -> bytes:
    """A minimal PE32+ image, written independently of the parser's struct formats."""
    table_at = pe_offset + 4 + 20 + opt_size
    data_at = table_at + 40 * len(sections)
    data_at += -data_at % pad_raw
    headers = bytearray(data_at)
    headers[0:2] = b"MZ"
    headers[0x3C:0x40] = pe_offset.to_bytes(4, "little")
    headers[pe_offset : pe_offset + 4] = b"PE\0\0"
    # Machine x86-64, sections, timestamp, symtab, nsyms, optional header size, characteristics
    coff = struct.pack("<HHIIIHH", 0x8664, len(sections), 0, 0, 0, opt_size, 0x22)
    headers[pe_offset + 4 : pe_offset + 24] = coff
    headers[pe_offset + 24 : pe_offset + 26] = opt_magic.to_bytes(2, "little")
    body = bytearray()
    for i, (name, data) in enumerate(sections):
        raw_size = len(data) + (-len(data) % pad_raw)
        ptr = data_at + len(body)
        entry = struct.pack(
            "<8sIIIIIIHHI", name, len(data), 0x1000 * (i + 1), raw_size, ptr, 0, 0, 0, 0, 0x40000040
        )
        headers[table_at + 40 * i : table_at + 40 * (i + 1)] = entry
        body += data + b"\0" * (raw_size - len(data))
    return bytes(headers + body)
