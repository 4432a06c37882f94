import asyncio

import uvloop


async def test_runs_on_both_loops(request):
    loop = asyncio.get_running_loop()
    if "uvloop" in request.node.name:
        assert isinstance(loop, uvloop.Loop)
    else:
        assert not isinstance(loop, uvloop.Loop)
