# Streaming an image into the inactive OTA slot: one 4096-byte buffer that
# the network reads into directly, whole-block writeblocks() (each block
# erased and written once), and one SHA-256 of the slot read back (what the
# slot holds, the image the manifest's sha256 covers) before the slot may
# become bootable.  Nothing is hashed while streaming: the read-back hash is
# the one that proves the slot, so a second one would only cost time.
import binascii
import hashlib

import cryptolib

from mpota.errors import ImageError, ManifestError, StateError, TransportError

BLOCK = const(4096)


def resume_point(offset, total):
    """Where a download saved at offset continues: the last whole block at or
    below it; 0 for an offset outside the payload (a state file from elsewhere)."""
    if type(offset) is not int or offset < 0 or offset > total:
        return 0
    return offset - offset % BLOCK


class SlotWriter:
    """Payload bytes in, image on flash.  With key (an encrypted release) the
    payload is AES-256-CBC ciphertext, decrypted block by block in place;
    total is then the payload size (the image size rounded up to 16)."""

    def __init__(self, part, size, buf, key=None, iv=None, total=None):
        capacity = part.ioctl(4, 0) * part.ioctl(5, 0)
        if size > capacity:
            raise ManifestError("image is %d bytes, slot %s holds %d"
                                % (size, part.info()[4], capacity), "too-large")
        self.part = part
        self.size = size  # image bytes to write and hash
        self.total = total or size  # payload bytes to download
        self.buf = buf  # memoryview(bytearray(4096)), owned by the caller
        self.committed = 0  # payload bytes handled, a multiple of BLOCK until the end
        self.fill = 0  # bytes in buf not yet on flash
        self.key = key
        self.iv = iv  # the manifest's IV: CBC state at payload byte 0
        self.cipher = cryptolib.aes(key, 2, iv) if key else None

    def iv_needed(self):
        """Bytes of ciphertext just before offset the download must supply
        (CBC's IV after a resume), else 0."""
        return 16 if self.key and self.cipher is None else 0

    def set_iv(self, iv):
        self.cipher = cryptolib.aes(self.key, 2, bytes(iv))

    @property
    def offset(self):
        return self.committed + self.fill

    def resume(self, offset, feed=None):
        """Continue after the bytes already on flash, from the last whole block
        at or below offset; returns that point.  A saved offset may include the
        partial last block (or equal the total, after a reset during the
        read-back): that block is downloaded again.  An offset outside the
        payload (a state file from elsewhere) starts again from 0.  The blocks
        kept are not read now: check() reads the whole slot back.  feed is
        accepted for older callers and not needed."""
        offset = resume_point(offset, self.total)
        if self.key:
            # past byte 0 the IV is the ciphertext block just before offset
            self.cipher = cryptolib.aes(self.key, 2, self.iv) if offset == 0 else None
        self.committed = offset
        self.fill = 0
        return offset

    def drop_partial(self):
        # after a broken connection: the bytes of an unfinished block are lost
        self.fill = 0

    def _flush(self):
        n = self.fill
        if self.key and self.cipher is None:
            # never write ciphertext as if it were the image
            raise StateError("resuming an encrypted release at byte %d needs the %d payload "
                             "bytes before it (the CBC IV): call set_iv() first"
                             % (self.committed, 16))
        if self.cipher is not None:
            self.cipher.decrypt(self.buf[:n], self.buf[:n])
        if self.committed == 0 and self.buf[0] != 0xE9:
            invalidate(self.part, self.buf)
            raise ImageError("the payload does not start with an app image header (0xE9): %s"
                             % ("wrong content key or not encrypted" if self.key else
                                "encrypted, or not an app image, while the manifest says "
                                "plain"))
        for i in range(min(n, self.size - self.committed), BLOCK):
            self.buf[i] = 0xFF  # erased flash: padding the last block writes nothing
        self.part.writeblocks(self.committed // BLOCK, self.buf)
        self.committed += n
        self.fill = 0

    def pull(self, response, count):
        """Steps (mpota.drive): move count bytes from response (readinto:
        None when nothing is there yet, see mpota.http) into the slot; a
        pause point after each block written."""
        if self.offset + count > self.total:
            raise ImageError("refusing data past the payload's %d bytes" % self.total)
        while count:
            want = min(BLOCK - self.fill, count)
            n = response.readinto(self.buf[self.fill:self.fill + want])
            if n is None:
                yield from response.wait()
                continue
            if not n:
                raise TransportError("the server stopped sending %d bytes early" % count)
            self.fill += n
            count -= n
            if self.fill == BLOCK or self.offset == self.total:
                self._flush()
                yield

    def skip(self, response, count):
        """Steps: read and drop count bytes (a server that ignored our Range)."""
        while count:
            n = response.readinto(self.buf[:min(BLOCK, count)])
            if n is None:
                yield from response.wait()
                continue
            if not n:
                raise TransportError("the server stopped sending while skipping")
            count -= n
        self.fill = 0

    def check(self, expected_hex, feed=None):
        """Steps: the SHA-256 of the image read back from the slot must be the
        manifest's; raises ImageError otherwise (the slot invalidated)."""
        if self.offset != self.total:
            raise ImageError("only %d of %d bytes were written" % (self.offset, self.total))
        yield from check_slot(self.part, self.size, expected_hex, self.buf, feed)


def check_slot(part, size, expected_hex, buf, feed=None):
    """Steps: read the first size bytes of the slot back and compare their
    SHA-256 (a pause point after each block); a slot that fails is
    invalidated before ImageError is raised."""
    sha = hashlib.sha256()
    left = size
    block = 0
    while left:
        part.readblocks(block, buf)
        sha.update(buf if left >= BLOCK else buf[:left])
        left -= min(BLOCK, left)
        block += 1
        if feed:
            feed()
        yield
    readback = binascii.hexlify(sha.digest()).decode()
    if readback != expected_hex:
        invalidate(part, buf)
        raise ImageError("image SHA-256 %s... (read back) does not match the manifest's "
                         "%s...: refusing to boot it" % (readback[:16], expected_hex[:16]))


def invalidate(part, buf=None):
    """Erase the slot's first block, so that the bootloader's and set_boot()'s
    image check refuse whatever the slot still holds.  Best effort: the caller
    is already failing, and the agent never boots a slot it did not verify."""
    try:
        if part.ioctl(6, 0):  # MP_BLOCKDEV_IOCTL_BLOCK_ERASE; non-zero: block size is not 4096
            if buf is None:
                buf = memoryview(bytearray(BLOCK))
            for i in range(BLOCK):
                buf[i] = 0xFF
            part.writeblocks(0, buf)
    except OSError as e:
        print("mpota: could not erase the first block of %s: %s" % (part.info()[4], e))
