# The seed's device code (000, section 4.2): PyCryptodome AES-GCM with a
# 12-byte random nonce, returning nonce + ciphertext + tag. Debian packages
# PyCryptodome under the name Cryptodome; the alias keeps the seed's import
# line unchanged. Tests append a driver that calls the two functions.
import sys, os
try:
    import Crypto.Cipher.AES
except ImportError:
    import Cryptodome, Cryptodome.Cipher, Cryptodome.Cipher.AES
    sys.modules["Crypto"] = Cryptodome
    sys.modules["Crypto.Cipher"] = Cryptodome.Cipher
from Crypto.Cipher import AES

def encrypt_payload(plaintext, key):
    nonce = os.urandom(12)
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    ciphertext, tag = cipher.encrypt_and_digest(plaintext)
    return nonce + ciphertext + tag

def decrypt_payload(ciphertext, key):
    nonce = ciphertext[:12]
    tag = ciphertext[-16:]
    ciphertext = ciphertext[12:-16]
    cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
    return cipher.decrypt_and_verify(ciphertext, tag)
