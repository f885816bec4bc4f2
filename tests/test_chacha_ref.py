"""The pure-Python ChaCha20 reference against RFC 8439's published vectors."""
import struct

import pytest

from vdso.chacha20 import (
    CONSTANTS,
    block_from_words,
    chacha20_block,
    chacha20_blocks,
    rfc8439_block,
    rfc8439_encrypt,
)

KEY_00_1F = bytes(range(32))


def test_constants_spell_expand_32_byte_k():
    assert struct.pack("<4I", *CONSTANTS) == b"expand 32-byte k"


def test_rfc8439_2_3_2_block_function():
    nonce = bytes.fromhex("000000090000004a00000000")
    expected = bytes.fromhex(
        "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
        "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e")
    assert rfc8439_block(KEY_00_1F, 1, nonce) == expected


def test_rfc8439_2_4_2_encryption():
    nonce = bytes.fromhex("000000000000004a00000000")
    plaintext = (b"Ladies and Gentlemen of the class of '99: If I could offer you "
                 b"only one tip for the future, sunscreen would be it.")
    expected = bytes.fromhex(
        "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
        "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
        "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
        "5af90bbf74a35be6b40b8eedf2785e42874d")
    assert rfc8439_encrypt(KEY_00_1F, 1, nonce, plaintext) == expected
    # ChaCha20 is an XOR stream: decrypting is encrypting again.
    assert rfc8439_encrypt(KEY_00_1F, 1, nonce, expected) == plaintext


# RFC 8439 Appendix A.1: the block function test vectors 1-5.
APPENDIX_A1 = [
    (bytes(32), 0, bytes(12),
     "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7"
     "da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"),
    (bytes(32), 1, bytes(12),
     "9f07e7be5551387a98ba977c732d080dcb0f29a048e3656912c6533e32ee7aed"
     "29b721769ce64e43d57133b074d839d531ed1f28510afb45ace10a1f4b794d6f"),
    (bytes(31) + b"\x01", 1, bytes(12),
     "3aeb5224ecf849929b9d828db1ced4dd832025e8018b8160b82284f3c949aa5a"
     "8eca00bbb4a73bdad192b5c42f73f2fd4e273644c8b36125a64addeb006c13a0"),
    (b"\x00\xff" + bytes(30), 2, bytes(12),
     "72d54dfbf12ec44b362692df94137f328fea8da73990265ec1bbbea1ae9af0ca"
     "13b25aa26cb4a648cb9b9d1be65b2c0924a66c54d545ec1b7374f4872e99f096"),
    (bytes(32), 0, bytes(11) + b"\x02",
     "c2c64d378cd536374ae204b9ef933fcd1a8b2288b3dfa49672ab765b54ee27c7"
     "8a970e0e955c14f3a88e741b97c286f75f8fc299e8148362fa198a39531bed6d"),
]


@pytest.mark.parametrize("key,counter,nonce,expected", APPENDIX_A1,
                         ids=[f"A.1#{i + 1}" for i in range(len(APPENDIX_A1))])
def test_rfc8439_appendix_a1(key, counter, nonce, expected):
    assert rfc8439_block(key, counter, nonce) == bytes.fromhex(expected)


def test_djb_layout_equals_rfc_layout_when_the_words_agree():
    # DJB words 12-13 = 64-bit counter, 14-15 = 0.  RFC words 12 = counter,
    # 13-15 = nonce.  With the high counter word as the first nonce word they
    # are the same 16 input words.
    key = bytes(range(100, 132))
    counter = 0x1234_5678_9ABC_DEF0
    nonce = struct.pack("<III", counter >> 32, 0, 0)
    assert chacha20_block(key, counter) == rfc8439_block(key, counter & 0xFFFFFFFF, nonce)
    # Appendix A.1 #1 and #2 have a zero nonce, so they are DJB blocks 0 and 1.
    assert chacha20_block(bytes(32), 0) == bytes.fromhex(APPENDIX_A1[0][3])
    assert chacha20_block(bytes(32), 1) == bytes.fromhex(APPENDIX_A1[1][3])


def test_counter_is_64_bit_and_carries():
    key = bytes(range(32))
    out, counter = chacha20_blocks(key, 0xFFFF_FFFF, 2)
    assert counter == 0x1_0000_0001
    assert out[64:] == block_from_words(CONSTANTS + struct.unpack("<8I", key) + (0, 1, 0, 0))


def test_counter_wraps_at_2_64():
    key = bytes(range(32))
    out, counter = chacha20_blocks(key, 2**64 - 1, 2)
    assert counter == 1
    assert out[64:] == chacha20_block(key, 0)


def test_blocks_are_consecutive_single_blocks():
    key = bytes(range(7, 39))
    out, counter = chacha20_blocks(key, 5, 3)
    assert counter == 8
    assert out == b"".join(chacha20_block(key, c) for c in (5, 6, 7))
    assert chacha20_blocks(key, 9, 0) == (b"", 9)


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError):
        chacha20_block(bytes(31), 0)
    with pytest.raises(ValueError):
        rfc8439_block(bytes(32), 0, bytes(8))
