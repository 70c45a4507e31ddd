-- Library (included before the scripts that read a conversation's stored value; tables/scripts.py).
-- A conversation's value (tables/conversations.py, ConversationState.pack) starts with a fixed header:
-- byte 1 the format, 0xC1; bytes 2-5 the version, bytes 6-9 the last day written, each an unsigned 32-bit
-- big-endian integer; then msgpack. A value written before that header (`<version>:<last_day>:` then
-- msgpack) starts with a digit: its version is the decimal digits before its first ':' (read by a plain
-- find, no pattern). Returns the version, or false for no value.
local function conversation_version(value)
  if not value then return false end
  if string.byte(value, 1) == 0xC1 then return (struct.unpack('>I4', value, 2)) end
  local colon = string.find(value, ':', 1, true)
  return colon and tonumber(string.sub(value, 1, colon - 1)) or false
end
