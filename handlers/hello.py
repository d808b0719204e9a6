"""The handler contract in four lines: a path with a parameter, and a JSON echo."""

from server import route


@route("/hello/{name}")
async def hello(request, name):
    return {"hello": name}          # a dict or list becomes a JSON response


@route("/echo", methods=["POST"])
async def echo(request):
    return await request.json()
