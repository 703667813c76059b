-- Test plugin: logs every http-muc-kick event that mod_http_muc_kick fires on its MUC host, as another module on the
-- component would receive it, so that an integration test can check the payload.

module:hook("http-muc-kick", function (event)
	module:log("info", "http-muc-kick event: room=%s nickname=%q occupant_jid=%q jid=%s reason=%q target=%s credential=%s "
		.. "label=%s address=%s", event.room.jid, event.nickname, event.occupant_jid, event.jid, tostring(event.reason),
		event.target, event.credential, tostring(event.label), event.address);
end);
